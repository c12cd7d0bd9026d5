"""`dte eval`: run evaluators on any checkpoint, outside the cycle.

Evaluators are the same plugin objects the cycle runs after training; here they get a
:class:`CycleContext` built for the checkpoint being evaluated (its cycle, stage and depth
from the store or its sidecar). Each runs on its own: one that raises is reported by name
in one line and the rest still run. Nothing is written unless ``--record`` is given; then
the metrics go to the store under the checkpoint's cycle with phase ``eval`` (the stage
gates read the newest value of a metric per cycle, so a recorded re-evaluation counts).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from dte_aar.arena import Arena, ArenaError, load_arena
from dte_aar.checkpoint import CheckpointError, read_sidecar, sha256_file
from dte_aar.cli import UserError, console, err_console, manager, workspace_option
from dte_aar.config import ConfigError, Settings, StageSettings, load_settings
from dte_aar.cycle import validate_plugin_config
from dte_aar.hookspecs import CheckpointInfo, CycleContext, Evaluator
from dte_aar.plugins import PluginError, Registry
from dte_aar.progress import NullProgress
from dte_aar.stages import gate_passes
from dte_aar.store import Store, StoreError

# The stage milestones, run by default whenever their plugins are loaded.
MILESTONES = ("phrases", "concepts", "persona", "selfknowledge")
UNREGISTERED = -1  # the cycle of a checkpoint the store does not know


@dataclass
class Evaluation:
    """What the evaluators said about one checkpoint."""

    checkpoint: CheckpointInfo
    stage: int
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # evaluator -> metrics
    failed: dict[str, str] = field(default_factory=dict)  # evaluator -> error
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def flat(self) -> dict[str, float]:
        return {k: v for metrics in self.metrics.values() for k, v in metrics.items()}


def default_evaluators(settings: Settings, registry: Registry) -> list[str]:
    """The workspace's evaluators, then every stage milestone that is loaded."""
    loaded = registry.components["evaluator"]
    names = [*settings.evaluators, *(m for m in MILESTONES if m in loaded)]
    return list(dict.fromkeys(names))


def resolve_checkpoint(spec: str | None, workspace: Path, store: Store) -> CheckpointInfo:
    """A checkpoint path, a cycle number, or (None) the store's latest good checkpoint."""
    if spec is None:
        info = store.latest_checkpoint()
        if info is None:
            raise CheckpointError(f"{workspace}: no good checkpoint yet (run `dte bootstrap`)")
        return info
    rows = store.good_checkpoints()
    path = Path(spec)
    if spec.isdigit() and not path.exists():
        row = next((r for r in rows if r["cycle"] == int(spec)), None)
        if row is None:
            raise CheckpointError(f"cycle {spec}: no good checkpoint")
        path = Path(row["path"])
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    row = next((r for r in rows if Path(r["path"]).resolve() == path.resolve()), None)
    if row is not None:
        return CheckpointInfo(path, row["sha256"], row["layers"], row["cycle"])
    sidecar = read_sidecar(path)
    return CheckpointInfo(path, sha256_file(path), int(sidecar.get("layers", 0)), UNREGISTERED)


def stage_of(info: CheckpointInfo, store: Store, settings: Settings) -> int:
    """The checkpoint's stage: as its cycle recorded it, else the first whose depth fits."""
    row = store.cycle(info.cycle) if info.cycle != UNREGISTERED else None
    if row is not None:
        return min(int(row["stage"]), len(settings.stages))
    for index, stage in enumerate(settings.stages, start=1):
        if stage.last_layer is None or info.layers <= stage.last_layer:
            return index
    return len(settings.stages)


def eval_context(
    settings: Settings,
    workspace: Path,
    arena: Arena,
    store: Store,
    info: CheckpointInfo,
    stage: int,
    logged: dict[str, float],
) -> CycleContext:
    """A context like the cycle's, for ``info``; ``ctx.log_metric`` lands in ``logged``."""
    return CycleContext(
        run_id=0,
        cycle=info.cycle,
        settings=settings,
        workspace=Path(workspace),
        arena=arena,
        store=store,
        checkpoint=info,
        progress=NullProgress(),
        log_metric=lambda name, value, step=None: logged.__setitem__(name, float(value)),
        plugin_config=lambda name: dict(settings.plugins.get(name, {})),
        stage=stage,
        grow=0,
    )


def run_evaluators(
    evaluators: list[Evaluator],
    info: CheckpointInfo,
    ctx_for: Callable[[dict[str, float]], CycleContext],
    stage: int,
    on_error: Callable[[str, str], None] | None = None,
) -> Evaluation:
    """Run each evaluator on ``info`` with its own context (``ctx_for(logged)``)."""
    result = Evaluation(info, stage)
    for evaluator in evaluators:
        logged: dict[str, float] = {}
        started = time.perf_counter()
        try:
            scores = evaluator.evaluate(info.path, ctx_for(logged))
            result.metrics[evaluator.name] = {
                **logged,
                **{k: float(v) for k, v in scores.items()},
            }
        except Exception as exc:
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            result.failed[evaluator.name] = message
            if on_error is not None:
                on_error(evaluator.name, message)
        result.seconds[evaluator.name] = time.perf_counter() - started
    return result


def record_metrics(store: Store, result: Evaluation) -> int:
    """Log the metrics under the checkpoint's cycle, phase ``eval``; returns how many."""
    info = result.checkpoint
    flat = result.flat
    for name, value in flat.items():
        store.log_metric(
            run_id=None,
            cycle=info.cycle,
            phase="eval",
            stage=result.stage,
            layers=info.layers,
            step=None,
            name=name,
            value=value,
        )
    return len(flat)


def _gate(stage: StageSettings, flat: dict[str, float]) -> str:
    sign = ">=" if stage.higher_is_better else "<="
    value = flat.get(stage.milestone)
    if value is None:
        return f"{stage.milestone} not measured by these evaluators"
    verdict = "pass" if gate_passes(stage, value) else "fail"
    return f"{stage.milestone} {value:.4g} {sign} {stage.threshold:g}: {verdict}"


def report(result: Evaluation, settings: Settings) -> dict[str, Any]:
    """The machine-readable result (``--json``)."""
    info = result.checkpoint
    stage = settings.stages[result.stage - 1]
    flat = result.flat
    return {
        "checkpoint": {
            "path": str(info.path),
            "cycle": None if info.cycle == UNREGISTERED else info.cycle,
            "layers": info.layers,
            "sha256": info.sha256,
        },
        "stage": {
            "index": result.stage,
            "name": stage.name,
            "milestone": stage.milestone,
            "threshold": stage.threshold,
            "higher_is_better": stage.higher_is_better,
            "value": flat.get(stage.milestone),
            "passed": (
                gate_passes(stage, flat[stage.milestone]) if stage.milestone in flat else None
            ),
        },
        "metrics": flat,
        "passed": {
            name[: -len("_pass")]: value >= 1.0
            for name, value in flat.items()
            if name.endswith("_pass")
        },
        "evaluators": {
            name: {
                "metrics": result.metrics.get(name),
                "error": result.failed.get(name),
                "seconds": round(seconds, 3),
            }
            for name, seconds in result.seconds.items()
        },
    }


def table(result: Evaluation) -> Table:
    """One row per metric; a milestone's bar and pass/fail sit on its row."""
    info = result.checkpoint
    where = f"cycle {info.cycle}, " if info.cycle != UNREGISTERED else ""
    out = Table(title=f"{info.path.name} ({where}{info.layers} layers)")
    out.add_column("evaluator")
    out.add_column("metric")
    out.add_column("value", justify="right")
    out.add_column("bar", justify="right")
    out.add_column("result")
    for evaluator, metrics in result.metrics.items():
        for name, value in metrics.items():
            if name.endswith(("_bar", "_pass")):
                continue
            bar = metrics.get(f"{name}_bar")
            passed = metrics.get(f"{name}_pass")
            verdict = "" if passed is None else "[green]pass[/]" if passed else "[red]fail[/]"
            out.add_row(evaluator, name, f"{value:.4g}", "" if bar is None else f"{bar:g}", verdict)
    for evaluator in result.failed:
        out.add_row(evaluator, "-", "-", "", "[red]crashed[/]")
    return out


@click.command("eval")
@click.argument("checkpoint", required=False)
@workspace_option
@click.option(
    "--evaluators",
    "names",
    help="Comma-separated evaluator names (default: the "
    "workspace's evaluators plus every loaded stage milestone).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--record", is_flag=True, help="Log the metrics in the store (phase 'eval').")
def eval_command(
    checkpoint: str | None, workspace: Path, names: str | None, as_json: bool, record: bool
) -> None:
    """Run evaluators on CHECKPOINT (a path or cycle number; default: the latest good one)."""
    try:
        settings = load_settings(workspace)
        registry = manager().registry()
        chosen = (
            [n.strip() for n in names.split(",") if n.strip()]
            if names
            else default_evaluators(settings, registry)
        )
        evaluators = [registry.get("evaluator", name) for name in chosen]
        for evaluator in evaluators:
            validate_plugin_config(evaluator, settings)
        arena = load_arena(settings.arena)
        with Store.open(workspace, readonly=not record) as store:
            info = resolve_checkpoint(checkpoint, workspace, store)
            if record and info.cycle == UNREGISTERED:
                raise CheckpointError(f"{info.path}: not a checkpoint of this store; cannot record")
            stage = stage_of(info, store, settings)
            result = run_evaluators(
                evaluators,
                info,
                lambda logged: eval_context(settings, workspace, arena, store, info, stage, logged),
                stage,
                on_error=lambda name, message: err_console.print(
                    f"[red]error:[/red] evaluator {name!r} failed: {escape(message)}",
                    highlight=False,
                ),
            )
            recorded = record_metrics(store, result) if record else None
    except (ConfigError, ArenaError, PluginError, StoreError, CheckpointError) as exc:
        raise UserError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report(result, settings), indent=2))
    else:
        console.print(table(result))
        index = result.stage
        gate = _gate(settings.stages[index - 1], result.flat)
        console.print(
            f"stage {index} ({settings.stages[index - 1].name}) gate: {gate}", highlight=False
        )
        if recorded is not None:
            console.print(f"recorded {recorded} metrics under cycle {info.cycle}", highlight=False)
    if result.failed:
        raise SystemExit(1)
