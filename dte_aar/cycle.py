"""The AAR cycle: generate -> curate -> train -> evaluate -> checkpoint -> commit.

Every phase's start and outcome is written to ``cycles`` and ``events`` before the next one
begins, so a run stopped anywhere (Ctrl-C, kill -9) resumes at the first phase not marked done:

- generate: one sample per (cycle, generator, slot); filled slots are skipped on resume.
- curate: one verdict per (sample, curator), written in batches of at most a second's work;
  judged samples are skipped on resume, and a lost batch's samples are judged again.
- train: the trainer writes its checkpoint atomically; a rerun simply overwrites it.
- checkpoint: the file's sha256 must still match what train recorded before it is registered
  as good, so a torn or altered file is never taken for a good one.

A stop request (``should_stop``, the daemon's SIGTERM or `dte daemon stop`) is honoured between
phases, between candidates and verdicts, and by the trainer between steps (it saves a partial
checkpoint): the phase is marked ``stopped`` and the run ends with status ``stopped``.

The cycle knows plugins only through the hooks (:mod:`dte_aar.plugins`).
"""

from __future__ import annotations

import json
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dte_aar.arena import Arena, heldout
from dte_aar.config import ConfigError, Settings
from dte_aar.corpus import POLICY, requests_per_generator, within_cap
from dte_aar.files import remove_checkpoint_files, sha256_file
from dte_aar.hookspecs import (
    CheckpointInfo,
    CycleContext,
    Event,
    GenerationRequest,
    Stopped,
    TrainResult,
)
from dte_aar.plugins import PluginManager
from dte_aar.progress import NullProgress, Progress
from dte_aar.self_record import record_samples, training_record
from dte_aar.stages import History, StageDecision, decide
from dte_aar.store import PHASES, Store, now


class CycleError(Exception):
    """A phase could not complete; the cycle is left resumable."""


class _Retrain(Exception):
    """The checkpoint phase found the trained file altered; the cycle trains again."""


@dataclass
class CycleOutcome:
    n: int
    layers: int
    generated: int = 0
    accepted: int = 0
    rejected: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def seed_rows(arena: Arena, settings: Settings) -> list[dict[str, Any]]:
    """The arena's seed examples as corpus rows, with a stable held-out split."""
    return [
        {
            "cycle": 0,
            "source": "seed",
            "origin": example.origin,
            "text": example.text,
            "split": (
                "heldout"
                if heldout(example.origin, settings.seed, settings.heldout_fraction)
                else "train"
            ),
            "status": "accepted",
        }
        for example in arena.seed
    ]


def resolve_components(settings: Settings, manager: PluginManager) -> tuple[list, list, Any, list]:
    """The configured generators, curators, trainer and evaluators, with their plugin configs
    validated: a typo or a bad value fails here, before anything is written."""
    registry = manager.registry()
    generators = [registry.get("generator", n) for n in settings.generators]
    curators = [registry.get("curator", n) for n in settings.curators]
    trainer = registry.get("trainer", settings.trainer)
    evaluators = [registry.get("evaluator", n) for n in settings.evaluators]
    for component in [*generators, *curators, trainer, *evaluators]:
        validate_plugin_config(component, settings)
    return generators, curators, trainer, evaluators


def validate_plugin_config(component: Any, settings: Settings) -> None:
    """Check ``[plugins.<name>]`` against the component's ``Config`` model before any work."""
    model = getattr(component, "Config", None)
    if model is None:
        return
    try:
        model(**settings.plugins.get(component.name, {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"plugins.{component.name}.{field}: {err['msg']}") from None


def prune_checkpoints(store: Store, keep: int) -> list[str]:
    """Keep the last ``keep`` good checkpoints and the best (lowest held-out perplexity);
    delete the other files and mark their rows pruned. Returns the removed paths."""
    rows = store.good_checkpoints()  # oldest first
    ppl = store.metric_by_cycle("heldout_ppl")
    scored = [r for r in rows if r["cycle"] in ppl]
    best = min(scored, key=lambda r: ppl[r["cycle"]])["cycle"] if scored else None
    removed = []
    for row in rows[:-keep]:
        if row["cycle"] == best:
            continue
        path = Path(row["path"])
        remove_checkpoint_files(path)
        store.mark_checkpoint_pruned(row["cycle"])
        removed.append(str(path))
    return removed


class Cycle:
    """Runs bootstrap cycles for one workspace; one instance per `dte bootstrap`."""

    def __init__(
        self,
        settings: Settings,
        workspace: Path,
        store: Store,
        manager: PluginManager,
        arena: Arena,
        progress: Progress | None = None,
        say: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.should_stop = should_stop or (lambda: False)
        self.workspace = Path(workspace)
        self.store = store
        self.manager = manager
        self.arena = arena
        self.progress = progress or NullProgress()
        self.say = say or (lambda message: None)
        self.registry = manager.registry()
        self.run_id: int | None = None
        self._phase_now: str | None = None  # tags metrics with the phase that logged them
        self._was_stopped = False  # the phase now running was ended by a stop last time
        self.generators, self.curators, self.trainer, self.evaluators = resolve_components(
            settings, manager
        )

    # ------------------------------------------------------------------ run
    def run(self, cycles: int) -> list[CycleOutcome]:
        """Run ``cycles`` cycles (finishing an interrupted one first counts as one); a stop
        request ends the run early with status ``stopped``."""
        self.begin(cycles)
        outcomes: list[CycleOutcome] = []
        status = "failed"
        try:
            for _ in range(cycles):
                outcome = self.run_cycle(self.next_cycle())
                if outcome is None:
                    break
                outcomes.append(outcome)
            status = "done"
        except KeyboardInterrupt:
            status = "interrupted"
            self.event("run_interrupted")
            raise
        except Stopped as exc:
            status = "stopped"
            self.say(f"stopped: {exc}")
        finally:
            self.finish(status)
        return outcomes

    def begin(self, cycles: int | None) -> int:
        """Open a run row and load the seed (once per workspace); return the run id."""
        settings_json = self.settings.model_dump(mode="json")
        self.run_id = self.store.start_run(self.arena.name, self.settings.preset, settings_json)
        self.event("run_started", data={"cycles": cycles})
        added = self.store.add_samples(seed_rows(self.arena, self.settings))
        if added:
            self.event("seed_loaded", data={"samples": added})
        return self.run_id

    def finish(self, status: str) -> None:
        if self.run_id is not None:
            self.store.end_run(self.run_id, status)
        self.event("run_ended", data={"status": status})

    def next_cycle(self) -> int:
        last = self.store.last_cycle()
        if last is None:
            return 0
        return last["n"] if last["status"] != "done" else last["n"] + 1

    def run_cycle(self, n: int) -> CycleOutcome | None:
        """Run (or resume) cycle ``n``; None when every stage is complete."""
        started = time.perf_counter()
        checkpoint = self.verified_checkpoint()
        decision = self.decide(checkpoint)
        if decision.finished:
            self.say(f"growth complete: {decision.note}")
            self.event("growth_complete", n, data={"note": decision.note})
            return None
        layers = (checkpoint.layers if checkpoint else 0) + decision.grow
        row = self.store.open_cycle(n, self.run_id or 0, decision.stage, layers)
        resumed = any(row[f"phase_{p}"] for p in PHASES)
        if not resumed:
            kind = "stage_advanced" if decision.advanced else "stage_decided"
            self.event(kind, n, data={"stage": decision.stage, "grow": decision.grow,
                                      "note": decision.note})  # fmt: skip
            if decision.advanced or decision.grow == 0:
                self.say(f"cycle {n}: {decision.note}")
        self.event("cycle_started", n, data={"layers": layers, "resumed": resumed})
        if resumed:
            self.say(f"resuming cycle {n} (layers {layers})")
        ctx = self.context(n, layers, checkpoint)
        ctx.stage, ctx.grow = decision.stage, decision.grow
        outcome = CycleOutcome(n=n, layers=layers)
        try:
            self._run_phases(ctx, outcome)
        except _Retrain:  # the trained file changed before it was registered: train again
            self.say(f"cycle {n}: checkpoint failed verification; training again")
            self._run_phases(ctx, outcome)
        outcome.metrics = {
            name: values[n]
            for name in ("heldout_ppl", "train_loss")
            if n in (values := self.store.metric_by_cycle(name))
        }
        outcome.seconds = time.perf_counter() - started
        return outcome

    def verified_checkpoint(self) -> CheckpointInfo | None:
        """The newest good checkpoint whose file still matches its sha256; a corrupt or
        missing one is marked bad and reported, and the previous good one is used."""
        while (info := self.store.latest_checkpoint()) is not None:
            if info.path.exists() and sha256_file(info.path) == info.sha256:
                return info
            self.store.mark_checkpoint_bad(info.sha256)
            self.say(f"warning: {info.path}: corrupt or missing; using the previous checkpoint")
            self.event("checkpoint_corrupt", info.cycle, data={"path": str(info.path)})
        return None

    def decide(self, checkpoint: CheckpointInfo | None) -> StageDecision:
        """Stage and growth for the next cycle, from committed history only."""
        done = [r for r in self.store.cycles() if r["status"] == "done"]
        history = [(r["stage"], r["layers"]) for r in done]
        milestone = None
        if done:
            stage = self.settings.stages[done[-1]["stage"] - 1]
            milestone = self.store.metric_by_cycle(stage.milestone).get(done[-1]["n"])
        layers = checkpoint.layers if checkpoint else 0
        return decide(
            self.settings.stages,
            layers,
            History(history, milestone),
            self.settings.train.layers_per_cycle,
        )

    def _run_phases(self, ctx: CycleContext, outcome: CycleOutcome) -> None:
        n = ctx.cycle
        row = self.store.cycle(n) or {}
        for phase in PHASES:
            if row.get(f"phase_{phase}") == "done":
                continue
            if self.should_stop():
                raise Stopped(f"cycle {n}: stop requested before {phase}")
            self._was_stopped = row.get(f"phase_{phase}") == "stopped"
            self.store.set_phase(n, phase, "running")
            self.event("phase_started", n, phase)
            self._phase_now = phase
            try:
                detail = getattr(self, f"_{phase}")(ctx, outcome) or {}
            except _Retrain:
                raise
            except Stopped as exc:
                self.store.set_phase(n, phase, "stopped")
                self.event("phase_stopped", n, phase, {"reason": str(exc)})
                raise
            except BaseException as exc:
                self.store.set_phase(n, phase, "failed", error=f"{type(exc).__name__}: {exc}")
                self.event("phase_failed", n, phase, {"error": str(exc)})
                if not isinstance(exc, KeyboardInterrupt | SystemExit):
                    self.store.update_cycle(n, status="failed")
                raise
            self.store.set_phase(n, phase, "done")
            self.event("phase_ended", n, phase, detail)

    def context(self, n: int, layers: int, checkpoint: Any) -> CycleContext:
        stage = (self.store.cycle(n) or {}).get("stage", 1)

        def log_metric(name: str, value: float, step: int | None = None) -> None:
            self.store.log_metric(
                run_id=self.run_id,
                cycle=n,
                phase=self._phase_now,
                stage=stage,
                layers=layers,
                step=step,
                name=name,
                value=float(value),
            )

        return CycleContext(
            run_id=self.run_id or 0,
            cycle=n,
            settings=self.settings,
            workspace=self.workspace,
            arena=self.arena,
            store=self.store,
            checkpoint=checkpoint,
            progress=self.progress,
            log_metric=log_metric,
            plugin_config=lambda name: dict(self.settings.plugins.get(name, {})),
            should_stop=self.should_stop,
        )

    # ------------------------------------------------------------------ phases
    def _generate(self, ctx: CycleContext, outcome: CycleOutcome) -> dict[str, Any]:
        written = 0
        for generator in self.generators:
            requests = self.requests(ctx, generator.name)
            if not requests:
                continue
            task = self.progress.task(f"gen:{generator.name}", total=len(requests))
            try:
                for candidate in generator.generate(requests, ctx):
                    sample_id = self.store.add_sample(
                        cycle=ctx.cycle,
                        source="generated",
                        generator=generator.name,
                        slot=candidate.slot,
                        model=candidate.model,
                        prompt=candidate.prompt,
                        text=candidate.text,
                        tokens=candidate.tokens,
                        cost=candidate.cost,
                        finish_reason=candidate.finish_reason,
                    )
                    if sample_id is not None:
                        written += 1
                        self.event("sample", ctx.cycle, "generate", {"id": sample_id})
                    task.advance(1)
                    if self.should_stop():
                        raise Stopped(f"cycle {ctx.cycle}: stopped after {written} samples")
            except Stopped:
                raise
            except Exception as exc:  # a crashed generator costs its own slots only
                self.plugin_failed(ctx.cycle, "generate", generator.name, exc)
            finally:
                task.close()
        outcome.generated = written
        return {"written": written}

    def requests(self, ctx: CycleContext, generator: str) -> list[GenerationRequest]:
        """Deterministic prompts for this (cycle, generator); filled slots left out."""
        rng = random.Random(f"{ctx.seed}:{generator}")
        filled = self.store.filled_slots(ctx.cycle, generator)
        seed_texts = [e.text for e in self.arena.seed]
        requests = []
        accepted = sum(v for k, v in self.store.corpus_counts().items() if k.endswith(":accepted"))
        for slot in range(requests_per_generator(self.settings.generate, accepted)):
            prompt = rng.choice(self.arena.prompts)
            style = rng.choice(seed_texts)
            slot_seed = rng.randrange(2**31)
            if slot not in filled:
                requests.append(GenerationRequest(slot, prompt, style, slot_seed))
        return requests

    def _curate(self, ctx: CycleContext, outcome: CycleOutcome) -> dict[str, Any]:
        pending = self.store.samples("cycle = ? and status = 'pending'", [ctx.cycle])
        ids = [s.id for s in pending]
        for curator in self.curators:
            done = self.store.judged(curator.name, ids)
            todo = [s for s in pending if s.id not in done]
            if not todo:
                continue
            task = self.progress.task(f"cur:{curator.name}", total=len(todo))
            try:
                with self.store.verdict_batches() as add:
                    for verdict in curator.curate(todo, ctx):
                        add({"sample_id": verdict.sample_id, "cycle": ctx.cycle,
                             "curator": curator.name, "keep": verdict.keep,
                             "score": verdict.score, "reason": verdict.reason})  # fmt: skip
                        task.advance(1)
                        if self.should_stop():
                            raise Stopped(f"cycle {ctx.cycle}: stopped while {curator.name} judged")
            except Stopped:
                raise
            except Exception as exc:
                self.plugin_failed(ctx.cycle, "curate", curator.name, exc)
            finally:
                task.close()
        counts = self.store.corpus_counts()
        real = counts.get("seed:accepted", 0) + counts.get("import:accepted", 0)
        synthetic = counts.get("generated:accepted", 0)
        cap = self.settings.generate.max_synthetic_share
        # Statuses are set one by one; a rerun after a crash sees the ones already set in
        # `counts` and decides the rest exactly as it would have.
        for sample in pending:
            verdicts = self.store.verdicts_for(sample.id)
            keep = bool(verdicts) and all(v["keep"] for v in verdicts)
            if keep and not within_cap(real, synthetic, cap):
                keep = False
                reason = f"synthetic share would exceed the cap of {cap:g}"
                self.store.add_verdict(sample.id, ctx.cycle, POLICY, False, 0.0, reason)
            synthetic += keep
            self.store.set_sample_status(sample.id, "accepted" if keep else "rejected")
            outcome.accepted += keep
            outcome.rejected += not keep
        ctx.log_metric("corpus_real", real, None)
        ctx.log_metric("corpus_synthetic", synthetic, None)
        ctx.log_metric("synthetic_share", synthetic / max(1, real + synthetic), None)
        return {"accepted": outcome.accepted, "rejected": outcome.rejected}

    def _train(self, ctx: CycleContext, outcome: CycleOutcome) -> dict[str, Any]:
        # A phase a stop ended may continue from its partial checkpoint: its per-step rows
        # stay, and the trainer clears those from where it resumes (progressive does).
        self.store.clear_metrics(ctx.cycle, "train", from_step=None if self._was_stopped else 0)
        self.add_self_record(ctx)
        result: TrainResult = self.trainer.train(ctx)
        digest = sha256_file(result.path)
        record = {
            "path": str(result.path),
            "sha256": digest,
            "layers": result.layers,
            "params": result.params,
        }
        self.store.update_cycle(ctx.cycle, train_result=json.dumps(record), layers=result.layers)
        for name, value in result.metrics.items():
            ctx.log_metric(name, value, None)
        return record

    def add_self_record(self, ctx: CycleContext) -> int:
        """From ``self_record_from_stage`` on, the agent's own training record joins the corpus
        just before training (:mod:`dte_aar.self_record`). Each text describes one cycle and
        stays true, so they accumulate; each is written once, by origin, so a rerun adds none."""
        start = self.settings.self_record_from_stage
        if start is None or ctx.stage < start:
            return 0
        record = training_record(self.store, ctx.cycle)
        rows = record_samples(record, self.arena.identity.name, self.settings.seed)
        added = self.store.add_samples(rows)
        ctx.log_metric("self_record_samples", added, None)
        if added:
            self.event("self_record", ctx.cycle, "train", {"samples": added})
        return added

    def _train_record(self, n: int) -> dict[str, Any]:
        row = self.store.cycle(n)
        if not row or not row["train_result"]:
            raise CycleError(f"cycle {n}: no training result recorded")
        return json.loads(row["train_result"])

    def _evaluate(self, ctx: CycleContext, outcome: CycleOutcome) -> dict[str, Any]:
        record = self._train_record(ctx.cycle)
        self.store.clear_metrics(ctx.cycle, "evaluate")
        results: dict[str, float] = {}
        for evaluator in self.evaluators:
            try:
                scores = evaluator.evaluate(Path(record["path"]), ctx)
            except Exception as exc:
                self.plugin_failed(ctx.cycle, "evaluate", evaluator.name, exc)
                continue
            for name, value in scores.items():
                ctx.log_metric(name, value, None)
                results[name] = float(value)
        return results

    def _checkpoint(self, ctx: CycleContext, outcome: CycleOutcome) -> dict[str, Any]:
        record = self._train_record(ctx.cycle)
        path = Path(record["path"])
        actual = sha256_file(path) if path.exists() else "missing"
        if actual != record["sha256"]:
            # Torn, altered or missing after training wrote it: never register it as good.
            for phase in ("train", "evaluate", "checkpoint"):
                self.store.set_phase(ctx.cycle, phase, None)
            self.event("checkpoint_rejected", ctx.cycle, "checkpoint", {"path": str(path)})
            raise _Retrain(f"{path}: does not match its recorded sha256")
        self.store.register_checkpoint(
            ctx.cycle, path, record["sha256"], record["layers"], record["params"]
        )
        pruned = prune_checkpoints(self.store, self.settings.train.keep_checkpoints)
        return {"path": str(path), "sha256": record["sha256"], "pruned": pruned}

    def _commit(self, ctx: CycleContext, outcome: CycleOutcome) -> dict[str, Any]:
        self.store.update_cycle(ctx.cycle, status="done", ended_at=now(), error=None)
        return {"layers": outcome.layers}

    # ------------------------------------------------------------------ events
    def plugin_failed(self, cycle: int, phase: str, name: str, exc: BaseException) -> None:
        owner = next((o for (_, comp), o in self.registry.owners.items() if comp == name), name)
        message = f"{type(exc).__name__}: {exc}"
        self.say(f"warning: plugin {owner!r} ({name}) failed in {phase}: {message}")
        self.event(
            "plugin_failed",
            cycle,
            phase,
            {
                "plugin": owner,
                "component": name,
                "error": message,
                "trace": traceback.format_exc(limit=5),
            },
        )

    def event(
        self,
        kind: str,
        cycle: int | None = None,
        phase: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.store.add_event(kind, self.run_id, cycle, phase, data)
        self.manager.emit(Event(kind, self.run_id, cycle, phase, dict(data or {})))
