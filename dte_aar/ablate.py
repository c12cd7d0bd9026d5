"""`dte ablate`: named arms of one config, trained at equal FLOPs on one corpus and split.

Published growth work (stacking, G_stack, MSLT) reports 1.4-2x less compute to a target loss
when every layer keeps training, and little or negative gain with frozen lower layers; the
seed's greedy schedule is the latter. This command shows that trade-off on the user's own data.

How it keeps the comparison fair (the arms and the FLOPs plan: :mod:`dte_aar.ablate_arms`):

- One corpus, split, tokenizer and packing for every arm and seed (:mod:`.ablate_corpus`);
  held-out loss on the same fixed windows at ``--evals`` points evenly spaced in FLOPs.
- Learning rate: one warmup + cosine over each arm's own steps (:func:`dte_aar.train.lr_at`).
  Every arm reaches the floor exactly when its FLOPs reach B. It is indexed by steps, i.e.
  tokens, not FLOPs: the optimizer sees batches, and indexing by FLOPs would hold a growing
  arm's many cheap shallow steps near the peak rate, which is a different schedule, not a
  fairer one.
- The activation cache is off: flops.py counts the frozen prefix's forward pass at every
  step, and so the arms do it.
- AdamW is rebuilt at each segment (a grown block, a new freezing) and keeps the moments of
  every parameter it had, as the real trainer does through its checkpoints.
- The batch of step i depends on (seed, i) alone, so every arm reads the same batches in the
  same order. Seed k (``settings.seed + k``) sets the model's init, Word2Vec and the order.
- Identity init as the progressive trainer's first cycle: Word2Vec of the train split, the
  co-occurrence factors, the key bias at log(self_reference_boost); computed once per seed.
  Identity losses: the trainer's own objective for the stage whose depth range holds the
  current depth (self-reference CE weights and the stage's terms); off is plain CE.
- Per arm: FLOPs to reach the baseline's final held-out loss (the headline, over B), the final
  held-out loss, the probes' perplexity and match score (as the milestone evaluator), the
  identity curator's score of a few seeded sampled replies, and wall time. Evaluation,
  anchors and sampling are not training and are not counted as FLOPs.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import click
import torch

from dte_aar.ablate_arms import BASELINE, DEFAULT_ARMS, Arm, budget, eval_steps, parse_arms, plan
from dte_aar.ablate_corpus import AblateError, Corpus, InitCache, prepare_corpus
from dte_aar.ablate_metrics import SampleScorer, heldout_loss, probe_metrics, sample_replies
from dte_aar.ablate_report import Ablation, ArmInfo, ArmRun, rich_table, write
from dte_aar.agent import Agent
from dte_aar.arena import Arena, ArenaError, load_arena
from dte_aar.cli_options import workspace_option
from dte_aar.config import ConfigError, Settings, StageSettings, load_settings
from dte_aar.losses import Objective
from dte_aar.model import PRESETS, GrowingTransformer, ModelConfig
from dte_aar.objective import stage_objective
from dte_aar.progress import NullProgress, Progress, RichProgress
from dte_aar.train import configure_optimizer, resolve_device, train
from dte_aar_plugins.progressive import ProgressiveConfig

DEFAULT_STEPS = {"tiny": 240}  # ~6 minutes for the default arms on one CPU thread
GPU_PRESET_STEPS = 2000


@dataclass(frozen=True)
class Options:
    preset: str
    arms: list[Arm]
    steps: int
    seeds: int = 1
    imports: tuple[Path, ...] = ()
    evals: int = 12
    eval_tokens: int = 8192
    samples: int = 8
    cycle_steps: int | None = None  # steps per growth segment; None: steps / (2 * depth)
    device: str | None = None


# --------------------------------------------------------------------------- one arm
@dataclass
class Bench:
    """What every arm shares."""

    settings: Settings
    arena: Arena
    corpus: Corpus
    shape: ModelConfig  # at the target depth, with the configured prior
    budget: int
    batch_tokens: int
    cycle_steps: int
    evals: int
    samples: int
    device: torch.device
    init: InitCache
    scorer: SampleScorer | None

    def arm_shape(self, arm: Arm) -> ModelConfig:
        return replace(self.shape, cooc_rank=self.settings.train.cooc_rank if arm.cooc else 0)


def stage_at(stages: list[StageSettings], layers: int) -> StageSettings:
    """The stage whose depth range holds ``layers``."""
    return next((s for s in stages if s.last_layer is None or layers <= s.last_layer), stages[-1])


def objective(arm: Arm, model: GrowingTransformer, layers: int, bench: Bench) -> Objective:
    """The progressive trainer's objective at this depth (anchors from the model as it is)."""
    if not arm.identity_losses:
        return Objective()
    stage = stage_at(bench.settings.stages, layers)
    tok, ids = bench.corpus.tokenizer, bench.corpus.self_ids
    return stage_objective(bench.settings, stage, bench.arena, model, tok, ids)


def carry_optimizer(
    model: GrowingTransformer, cfg: Any, old: torch.optim.Optimizer | None
) -> torch.optim.Optimizer:
    """A fresh AdamW over what trains now, with the moments of the parameters ``old`` had."""
    new = configure_optimizer(model, cfg)
    if old is not None:
        for group in new.param_groups:
            for p in group["params"]:
                if p in old.state:
                    new.state[p] = old.state[p]
    return new


def build_model(arm: Arm, cfg: ModelConfig, bench: Bench, seed: int) -> GrowingTransformer:
    """The arm's model at ``cfg.n_layers`` with the trainer's identity-embedded init."""
    model = GrowingTransformer(cfg, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        if arm.embedding_init == "word2vec":
            model.tok_emb.weight.copy_(bench.init.word2vec(seed))
        if cfg.cooc_rank:
            model.set_cooc_factors(*bench.init.cooc(seed))
        boost = math.log(bench.settings.train.self_reference_boost)
        model.init_key_bias(bench.corpus.self_ids, boost)
    return model.to(bench.device)


def run_arm(arm: Arm, bench: Bench, seed: int, progress: Progress) -> ArmRun:
    t_start = time.perf_counter()
    shape = bench.arm_shape(arm)
    per_cycle = bench.settings.train.layers_per_cycle
    segments = plan(arm, shape, bench.budget, bench.batch_tokens, bench.cycle_steps, per_cycle)
    total_steps = sum(s.steps for s in segments)
    marks = eval_steps(segments, bench.budget, bench.evals)
    train_cfg = bench.settings.train.model_copy(
        update={"activation_cache": False, "seq_len": shape.seq_len}
    )
    model = build_model(arm, replace(shape, n_layers=segments[0].layers), bench, seed)
    growth_gen = torch.Generator().manual_seed(seed + 1)
    windows = bench.corpus.windows
    curve = [(0.0, heldout_loss(model, windows))]
    optimizer = None
    step, flops, train_s = 0, 0, 0.0
    task = progress.task(f"{arm.name} s{seed}", total=total_steps)
    try:
        for seg in segments:
            if seg.grow:
                model.grow(arm.growth or "identity", generator=growth_gen, n=seg.grow)
            model.set_trainable(seg.trainable_top)
            optimizer = carry_optimizer(model, train_cfg, optimizer)
            obj = objective(arm, model, seg.layers, bench)
            end = step + seg.steps
            bounds = [step, *(m for m in marks if step < m < end), end]
            for start, stop in pairwise(bounds):
                t0 = time.perf_counter()
                train(
                    model, bench.corpus.train, total_steps, train_cfg, seed,
                    progress_task=task, optimizer=optimizer, objective=obj,
                    start_step=start, stop_step=stop,
                )  # fmt: skip
                train_s += time.perf_counter() - t0
                flops += (stop - start) * seg.step_flops
                if stop in marks:
                    curve.append((float(flops), heldout_loss(model, windows)))
            step = end
    finally:
        task.close()
    agent = Agent(model, bench.corpus.tokenizer, {})
    probe_ppl, probe_match = probe_metrics(agent, bench.arena)
    identity_mean = identity_pass = None
    if bench.scorer is not None and bench.samples:
        replies = sample_replies(agent, bench.arena, bench.settings, bench.samples, seed)
        identity_mean, identity_pass = bench.scorer.score(replies)
    return ArmRun(
        arm=arm.name,
        seed=seed,
        steps=total_steps,
        flops=float(flops),
        curve=curve,
        final_loss=curve[-1][1],
        probe_ppl=probe_ppl,
        probe_match=probe_match,
        identity_mean=identity_mean,
        identity_pass=identity_pass,
        train_seconds=train_s,
        seconds=time.perf_counter() - t_start,
        segments=[asdict(s) for s in segments],
    )


# --------------------------------------------------------------------------- the ablation
def model_shape(settings: Settings, preset: str, vocab_size: int) -> ModelConfig:
    """The preset at its target depth with the workspace's ``[plugins.progressive]`` overrides,
    its sequence length, its prior and the identity key bias (as the trainer builds it)."""
    base = PRESETS[preset]
    overrides = ProgressiveConfig(**settings.plugins.get("progressive", {})).model_dump()
    shape = replace(
        base,
        vocab_size=vocab_size,
        seq_len=settings.train.seq_len or base.seq_len,
        cooc_rank=settings.train.cooc_rank,
        key_bias=True,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    return replace(shape, n_layers=shape.target_layers)


def run_ablation(
    opts: Options,
    settings: Settings,
    arena: Arena,
    workdir: Path,
    progress: Progress | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> Ablation:
    """Train every arm with every seed; ``workdir`` holds the packed tokens meanwhile."""
    t_start = time.perf_counter()
    progress = progress or NullProgress()
    train_cfg = settings.train
    preset = PRESETS[opts.preset]
    seq_len = train_cfg.seq_len or preset.seq_len
    vocab = train_cfg.vocab_size or preset.vocab_size
    corpus = prepare_corpus(
        arena, settings, opts.imports, vocab, seq_len, opts.eval_tokens, workdir
    )
    shape = model_shape(settings, opts.preset, corpus.tokenizer.get_vocab_size())
    arms = [arm.resolve(train_cfg) for arm in opts.arms]
    batch_tokens = train_cfg.batch_size * shape.seq_len
    cycle_steps = opts.cycle_steps or max(1, round(opts.steps / (2 * shape.target_layers)))
    bench = Bench(
        settings=settings,
        arena=arena,
        corpus=corpus,
        shape=shape,
        budget=budget(shape, opts.steps, batch_tokens),
        batch_tokens=batch_tokens,
        cycle_steps=cycle_steps,
        evals=opts.evals,
        samples=opts.samples,
        device=resolve_device(opts.device or train_cfg.device),
        init=InitCache(corpus, shape, settings),
        scorer=SampleScorer(arena, settings, corpus.tokenizer, workdir) if opts.samples else None,
    )
    result = Ablation(
        preset=opts.preset,
        shape={k: getattr(shape, k) for k in ("vocab_size", "d_model", "n_heads", "d_ff")}
        | {"target_layers": shape.target_layers, "cooc_rank": shape.cooc_rank},
        budget_flops=float(bench.budget),
        baseline_steps=opts.steps,
        batch_size=train_cfg.batch_size,
        seq_len=shape.seq_len,
        cycle_steps=cycle_steps,
        seeds=[settings.seed + k for k in range(opts.seeds)],
        corpus={
            **corpus.counts,
            "train_tokens": len(corpus.train),
            "heldout_tokens": corpus.heldout_tokens,
            "eval_tokens": int(corpus.windows[:, 1:].numel()),
            "imports": [str(p) for p in opts.imports],
        },
        arms=[ArmInfo(name=a.name, summary=a.summary, method=a.describe()) for a in arms],
        notes=_notes(arms, corpus),
    )
    for note in result.notes:
        say(note)
    for seed in result.seeds:
        for arm in arms:
            run = run_arm(arm, bench, seed, progress)
            result.runs.append(run)
            say(
                f"{arm.name} (seed {seed}): held-out loss {run.final_loss:.3f} after "
                f"{run.steps} steps, {run.flops / bench.budget:.4f} B, {run.seconds:.0f} s"
            )
            depth = run.segments[-1]["layers"]
            if depth < shape.target_layers and seed == result.seeds[0]:
                note = (
                    f"note: {arm.name} spent the budget while growing and ended at {depth} of "
                    f"{shape.target_layers} layers (raise --steps or lower --cycle-steps)"
                )
                result.notes.append(note)
                say(note)
    result.score()
    result.wall_seconds = time.perf_counter() - t_start
    return result


def _notes(arms: list[Arm], corpus: Corpus) -> list[str]:
    notes = []
    base = next(a for a in arms if a.name == BASELINE)
    for arm in arms:
        if arm is not base and arm.method() == base.method():
            notes.append(f"note: under this config, arm {arm.name!r} trains exactly as baseline")
    if corpus.problems:
        first = corpus.problems[0]
        notes.append(f"note: {len(corpus.problems)} import problem(s) skipped, first: {first}")
    return notes


# --------------------------------------------------------------------------- the command
@click.command("ablate")
@workspace_option("Workspace whose dte.toml configures the arms (defaults if it has none).")
@click.option(
    "--preset", type=click.Choice(sorted(PRESETS)), help="Model preset (default: config's)."
)
@click.option(
    "--arms", help=f"Comma-separated arm names, or 'all' (default: {','.join(DEFAULT_ARMS)})."
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    help=f"Baseline steps; sets the FLOPs budget (default: {DEFAULT_STEPS['tiny']} for tiny, "
    f"{GPU_PRESET_STEPS} otherwise).",
)
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Seeds per arm (settings.seed, +1, ...); cells become mean ± std.",
)
@click.option(
    "--import",
    "imports",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Add text/source/JSONL files or directories to the corpus (repeatable).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory (default: <workspace>/ablation, or ./ablation without a workspace).",
)
@click.option(
    "--evals",
    type=click.IntRange(min=2),
    default=12,
    show_default=True,
    help="Held-out evaluations per arm, evenly spaced in FLOPs.",
)
@click.option(
    "--eval-tokens",
    type=click.IntRange(min=1),
    default=8192,
    show_default=True,
    help="Held-out tokens each evaluation reads (fixed windows).",
)
@click.option(
    "--samples",
    type=click.IntRange(min=0),
    default=8,
    show_default=True,
    help="Sampled replies per arm scored for identity (0: skip).",
)
@click.option(
    "--cycle-steps",
    type=click.IntRange(min=1),
    help="Steps per growth segment (default: steps / (2 * target layers)).",
)
@click.option("--device", help="auto, cpu, cuda, ... (default: train.device).")
def ablate_command(
    workspace: Path,
    preset: str | None,
    arms: str | None,
    steps: int | None,
    seeds: int,
    imports: tuple[Path, ...],
    out: Path | None,
    evals: int,
    eval_tokens: int,
    samples: int,
    cycle_steps: int | None,
    device: str | None,
) -> None:
    """Compare growth schedules and init choices at equal training FLOPs."""
    from rich.console import Console

    try:
        chosen = parse_arms(arms)
        settings = load_settings(workspace)
        arena = load_arena(settings.arena)
    except (ValueError, ConfigError, ArenaError) as exc:
        raise click.ClickException(str(exc)) from None
    preset = preset or settings.preset
    opts = Options(
        preset=preset,
        arms=chosen,
        steps=steps or DEFAULT_STEPS.get(preset, GPU_PRESET_STEPS),
        seeds=seeds,
        imports=imports,
        evals=evals,
        eval_tokens=eval_tokens,
        samples=samples,
        cycle_steps=cycle_steps,
        device=device,
    )
    out = out or (workspace if workspace.is_dir() else Path(".")) / "ablation"
    console = Console()
    with tempfile.TemporaryDirectory(prefix="dte-ablate-") as tmp:
        try:
            with RichProgress(console) as progress:
                result = run_ablation(opts, settings, arena, Path(tmp), progress, console.print)
        except AblateError as exc:
            raise click.ClickException(str(exc)) from None
    paths = write(result, out)
    console.print(rich_table(result))
    console.print(
        f"wrote {paths['table']}, {paths['curves']} and {paths['results']} "
        f"({result.wall_seconds:.0f} s)"
    )
