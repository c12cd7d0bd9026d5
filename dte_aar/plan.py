"""`dte plan`: what a run costs before it starts, counted the way the trainer spends it.

Tokens. ``D`` is the number of tokens trained in the whole run: corpus tokens x ``epochs``.
Every schedule trains the same ``D``, so they differ only in what a token costs:

- ``full``: all layers trainable from the first step (the 6ND-plus-attention baseline);
- ``greedy`` and ``none``: the progressive run, cycle by cycle, as the stages would drive it
  (:func:`dte_aar.stages.decide`, replayed with every milestone gate failing until its cycle
  budget is spent, ``--gates budget``, or passing at its first check, ``--gates pass``), with
  ``D`` split evenly over the cycles, as a fixed ``steps_per_cycle`` does; each cycle trains
  what the ``progressive`` trainer would (its own ``trainable_top_blocks``), frozen blocks
  counted forward-only (:mod:`dte_aar.flops`). The plan shows the ``steps_per_cycle`` that
  spends ``D`` at the workspace's batch size.

FLOPs per token come from :func:`dte_aar.flops.flops_per_token`, attention at full context and
the attention priors' extra q/k columns included. Generation and evaluation are not counted.

Time: ``hours = FLOPs / (gpus * peak * MFU) / 3600``; cost ``= hours * gpus * $/h``. The MFU
is ``--mfu``, else the one ``bench/bench_gpu.py`` recorded in ``bench/results/gpu.json``,
else :data:`DEFAULT_MFU`, an assumption; the output says which.

Memory per GPU (bf16 autocast as the trainer runs it, flash attention, no recomputation):

- a trainable parameter costs 18 bytes: fp32 weight 4 + fp32 gradient 4 + AdamW's two fp32
  moments 8 + the bf16 copy autocast caches for forward and backward 2; under DDP with more
  than one GPU the gradient buckets hold another 4. A frozen parameter costs its fp32 weight, 4.
- activations per token of one trainable block: ``20h + 8P + 4f + 4a`` bytes (h = d_model,
  f = d_ff, a = heads, P = a x prior columns): fp32 inputs of the two layer norms (8h, the
  residual stream stays fp32), bf16 inputs of qkv, attention output projection and fc (6h),
  q, k, v and the flash output with the prior columns (8(h + P)), its fp32 log-sum-exp (4a),
  GELU's input and output (4f). This is Korthikanti et al. 2022 (arXiv:2205.05198), 34sbh +
  5as^2b, without dropout masks, with fp32 layer-norm inputs, and without the as^2 terms,
  which flash attention never stores. Frozen blocks keep nothing (they run under no_grad).
- the head per token: ``10h + 14V`` at the peak of the loss's backward: the final norm's fp32
  input and output and the head's bf16 input (10h), the bf16 logits the loop holds (2V), the
  fp32 log-probabilities cross-entropy saves (4V) and two fp32 gradients of them (8V).
- FSDP (``--gpus`` > 1): weights, gradients and optimizer states divided by the GPU count,
  plus two gathered blocks (fp32); activations are not sharded. The trainer shards only the
  presets in ``FSDP_PRESETS`` (``large``); the others replicate (DDP), so "fits" and the
  largest micro-batch use the FSDP figure for those presets alone.

A GPU "fits" when the estimate is at most 90% of its memory (CUDA context, allocator slack).
``bench/bench_gpu.py`` measures the peak on a real GPU and records it beside this estimate.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import BaseModel, Field

from dte_aar.config import StageSettings, default_stages
from dte_aar.distributed import FSDP_PRESETS
from dte_aar.flops import StepShape, flops_per_token
from dte_aar.model import PRESETS, ModelConfig, config_num_params
from dte_aar.schedule import trainable_top_blocks
from dte_aar.stages import History, decide

Schedule = Literal["greedy", "none", "full"]
Gates = Literal["budget", "pass"]
SCHEDULES: tuple[Schedule, ...] = ("full", "greedy", "none")

GPU_RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "gpu.json"
DEFAULT_MFU = 0.35
"""An assumption, not a measurement: well-tuned GPT-2-scale training on A100/H100 reaches
roughly 30-50% model FLOPs utilisation; below that for small widths and short sequences."""
DEFAULT_BYTES_PER_TOKEN = 4.0
"""An assumption: OpenAI's rule of thumb for English BPE at a ~50k vocabulary (one token is
about four characters). A workspace gives the measured value instead."""
MEASURE_BYTES = 20_000_000  # bytes of text tokenized to measure bytes/token
FIT_FRACTION = 0.9  # share of a GPU's memory a plan may use
SEED_CLAIM = {"params": 124_000_000, "a100_hours": 1200.0}
"""The seed document's only compute figure: "a 124M model needs 1,200 A100-hours" (tokens and
utilisation unstated)."""
CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022: compute-optimal tokens per parameter


class Gpu(BaseModel):
    name: str
    peak_tflops: float = Field(description="dense bf16 tensor-core TFLOP/s, fp32 accumulate")
    memory_gib: float
    price_per_hour: float = Field(description="USD per GPU-hour, on demand (an assumption)")


# Peaks: NVIDIA datasheets (A100 80GB SXM, H100 SXM, H200 SXM: dense bf16, no sparsity) and the
# Ada whitepaper for the RTX 4090 (165.2 TFLOP/s bf16 with fp32 accumulate, dense; the 330 often
# quoted is with sparsity). Prices: RunPod on-demand list prices, March 2026 (as collected by
# deploybase.ai); they move monthly, and hyperscalers charge 1.5-3x. Override with
# --price-per-hour.
GPUS: dict[str, Gpu] = {
    "A100": Gpu(name="A100 80GB SXM", peak_tflops=312, memory_gib=80, price_per_hour=1.39),
    "H100": Gpu(name="H100 80GB SXM", peak_tflops=989, memory_gib=80, price_per_hour=2.69),
    "H200": Gpu(name="H200 141GB SXM", peak_tflops=989, memory_gib=140, price_per_hour=3.59),
    "RTX4090": Gpu(name="RTX 4090 24GB", peak_tflops=165, memory_gib=24, price_per_hour=0.34),
}


class PlanError(click.ClickException):
    """A bad option or an unreadable input: one line, exit code 2 (the CLI's convention)."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


# ---------------------------------------------------------------------- sizes
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?(?:e\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``50M``, ``2G``, ``1.5T``, ``2e9``, ``300k``; ``GB``/``GiB`` forms too (K/M/G/T are
    powers of 1000, Ki/Mi/Gi/Ti of 1024)."""
    m = _SIZE.match(str(text).replace(",", "").replace("_", ""))
    if not m or (m.group(3) and not m.group(2)):
        raise ValueError(f"{text!r} is not a size (a number with an optional K, M, G or T: 50M)")
    number, unit, binary = float(m.group(1)), m.group(2).lower(), bool(m.group(3))
    power = " kmgt".index(unit) if unit else 0
    return int(round(number * (1024 if binary else 1000) ** power))


# ---------------------------------------------------------------------- models
class CycleStep(BaseModel):
    cycle: int
    stage: int
    layers: int
    trainable_top: int | None = Field(description="top blocks trained; None: everything")
    tokens: float
    flops_per_token: int
    flops: float


class Memory(BaseModel):
    micro_batch: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    total: float = Field(description="bytes per GPU, DDP or one GPU")
    fsdp_total: float | None = Field(None, description="bytes per GPU under FSDP")
    sharded: bool = Field(False, description="the trainer would shard this run (FSDP)")

    @property
    def needed(self) -> float:
        """What the run the trainer would make needs per GPU."""
        return self.fsdp_total if self.sharded and self.fsdp_total is not None else self.total


class ScheduleEstimate(BaseModel):
    schedule: Schedule
    cycles: list[CycleStep]
    flops: float
    ratio_to_full: float
    steps_per_cycle: float = Field(description="optimizer steps per cycle that spend D")
    peak_memory: Memory
    peak_cycle: int


class GpuEstimate(BaseModel):
    gpu: str
    schedule: Schedule
    hours: float = Field(description="wall-clock hours on --gpus GPUs")
    gpu_hours: float
    cost: float
    price_per_hour: float
    fits: bool
    max_micro_batch: int = Field(description="largest micro-batch within the memory (0: none)")


class Corpus(BaseModel):
    bytes: int | None
    tokens: int
    bytes_per_token: float
    bytes_per_token_source: str
    epochs: float
    trained_tokens: float = Field(description="D: tokens trained over the whole run")


class Mfu(BaseModel):
    value: float
    source: str


class SeedComparison(BaseModel):
    claim_params: int
    claim_a100_hours: float
    gpt2_params: int = Field(description="GPT-2 small's shape, tied head: the seed's 124M")
    gpt2_flops_per_token: int
    a100_hours_this_corpus: float
    ratio_this_corpus: float = Field(description="seed's hours / planner's")
    chinchilla_tokens: float
    a100_hours_chinchilla: float
    ratio_chinchilla: float
    tokens_the_claim_buys: float = Field(description="tokens 1,200 A100-hours train at the MFU")
    a100_hours_this_plan: dict[str, float]


class Plan(BaseModel):
    model: dict[str, Any]
    params: int
    trainable_params_full: int
    corpus: Corpus
    mfu: Mfu
    gpus: int
    gates: Gates
    batch_size: int
    schedules: list[ScheduleEstimate]
    estimates: list[GpuEstimate]
    seed: SeedComparison
    notes: list[str]


# ---------------------------------------------------------------------- the run's cycles
def stages_for_depth(stages: list[StageSettings], depth: int) -> list[StageSettings]:
    """The stage list with its depths scaled so growth ends at ``depth`` (unchanged if it
    already does): a shape with another layer count keeps the stages' proportions."""
    final = max(s.last_layer or 0 for s in stages)
    if final == depth or final == 0:
        return stages
    scaled = []
    for s in stages:
        if s.last_layer is None:
            scaled.append(s)
            continue
        last = depth if s.last_layer == final else max(1, round(s.last_layer * depth / final))
        scaled.append(s.model_copy(update={"last_layer": min(last, depth)}))
    return scaled


def run_cycles(
    stages: list[StageSettings], per_cycle: int, gates: Gates
) -> list[tuple[int, int, int, bool]]:
    """(stage, layers, blocks grown, first cycle) of every cycle, the stage decisions replayed:
    ``budget``, no milestone ever passes (each stage spends its cycle budget); ``pass``, each
    passes at its first check."""
    cycles: list[tuple[int, int, int, bool]] = []
    history: list[tuple[int, int]] = []
    layers = 0
    while len(cycles) < 100_000:
        value = None
        if history and gates == "pass":
            value = stages[history[-1][0] - 1].threshold  # exactly at the threshold passes
        d = decide(stages, layers, History(list(history), value), per_cycle)
        if d.finished:
            break
        first = not history
        layers += d.grow
        history.append((d.stage, layers))
        cycles.append((d.stage, layers, d.grow, first))
    return cycles


def schedule_cycles(
    schedule: Schedule,
    cfg: ModelConfig,
    stages: list[StageSettings],
    per_cycle: int,
    gates: Gates,
    trained_tokens: float,
) -> list[CycleStep]:
    """Each cycle's shape, tokens and FLOPs; ``full`` is one phase at the final depth."""
    if schedule == "full":
        depth = max(s.last_layer or 0 for s in stages)
        per_token = flops_per_token(cfg, StepShape(depth))
        return [
            CycleStep(
                cycle=1,
                stage=0,
                layers=depth,
                trainable_top=None,
                tokens=trained_tokens,
                flops_per_token=per_token,
                flops=per_token * trained_tokens,
            )
        ]
    runs = run_cycles(stages, per_cycle, gates)
    tokens = trained_tokens / len(runs)
    steps = []
    for n, (stage, layers, grew, first) in enumerate(runs, 1):
        unfreeze_all = stages[stage - 1].unfreeze_all
        top = trainable_top_blocks(schedule, layers, first, grew, unfreeze_all)
        per_token = flops_per_token(cfg, StepShape(layers, top))
        steps.append(
            CycleStep(
                cycle=n,
                stage=stage,
                layers=layers,
                trainable_top=top,
                tokens=tokens,
                flops_per_token=per_token,
                flops=per_token * tokens,
            )
        )
    return steps


# ---------------------------------------------------------------------- memory
def block_params(cfg: ModelConfig) -> int:
    return config_num_params(cfg, n_layers=1) - config_num_params(cfg, n_layers=0)


def trainable_params(cfg: ModelConfig, layers: int, top: int | None) -> int:
    """Parameters with gradients: everything, or the top blocks plus final norm and head
    (``GrowingTransformer.set_trainable``: embeddings freeze with any n)."""
    if top is None:
        return config_num_params(cfg, n_layers=layers)
    head = config_num_params(cfg, non_embedding=True, n_layers=0)  # final norm + head
    return min(top, layers) * block_params(cfg) + head


def block_activation_bytes(cfg: ModelConfig) -> int:
    """Bytes kept for backward per token by one trainable block (see the module docstring)."""
    h, f, a = cfg.d_model, cfg.d_ff, cfg.n_heads
    return 20 * h + 8 * a * cfg.prior_columns + 4 * f + 4 * a


def head_activation_bytes(cfg: ModelConfig) -> int:
    """Bytes per token at the peak of the loss's backward (see the module docstring)."""
    return 10 * cfg.d_model + 14 * cfg.vocab_size


def activation_bytes_per_token(cfg: ModelConfig, layers: int, top: int | None) -> int:
    blocks = layers if top is None else min(top, layers)
    return blocks * block_activation_bytes(cfg) + head_activation_bytes(cfg)


def memory(
    cfg: ModelConfig,
    layers: int,
    top: int | None,
    micro_batch: int,
    gpus: int = 1,
    sharded: bool = False,
) -> Memory:
    """Peak bytes per GPU of one training step at this shape (see the module docstring)."""
    total_params = config_num_params(cfg, n_layers=layers)
    train = trainable_params(cfg, layers, top)
    frozen = total_params - train
    weights = 4 * total_params + 2 * train  # fp32 weights + autocast's bf16 copies
    grads = (4 + (4 if gpus > 1 else 0)) * train  # + DDP's gradient buckets
    optimizer = 8 * train
    acts = micro_batch * cfg.seq_len * activation_bytes_per_token(cfg, layers, top)
    fsdp = None
    if gpus > 1:
        states = (16 * train + 4 * frozen) / gpus
        fsdp = states + 2 * 4 * block_params(cfg) + acts
    return Memory(
        micro_batch=micro_batch,
        weights=weights,
        gradients=grads,
        optimizer=optimizer,
        activations=acts,
        total=weights + grads + optimizer + acts,
        fsdp_total=fsdp,
        sharded=sharded and fsdp is not None,
    )


def max_micro_batch(
    cfg: ModelConfig, layers: int, top: int | None, gpu: Gpu, gpus: int, sharded: bool = False
) -> int:
    """The largest micro-batch whose estimate fits ``gpu``."""
    budget = FIT_FRACTION * gpu.memory_gib * 2**30
    per_seq = cfg.seq_len * activation_bytes_per_token(cfg, layers, top)
    fixed = memory(cfg, layers, top, 0, gpus, sharded).needed
    return max(0, int((budget - fixed) // per_seq))


# ---------------------------------------------------------------------- time, MFU, corpus
def gpu_hours(flops: float, gpu: Gpu, mfu: float, gpus: int = 1) -> float:
    """Wall-clock hours of ``flops`` on ``gpus`` GPUs at ``mfu`` of their peak."""
    return flops / (gpus * gpu.peak_tflops * 1e12 * mfu) / 3600


def recorded_mfu(path: Path | None = None) -> Mfu | None:
    """The MFU ``bench/bench_gpu.py`` measured, if it has run here."""
    path = GPU_RESULTS if path is None else path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        value = float(data["mfu"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not 0 < value <= 1:
        return None
    what = data.get("mfu_run", "")
    source = f"measured by bench/bench_gpu.py on {data.get('device', '?')}"
    source += f", {data.get('date', '?')}" + (f" ({what})" if what else "")
    return Mfu(value=value, source=source)


def choose_mfu(override: float | None, path: Path | None = None) -> Mfu:
    if override is not None:
        return Mfu(value=override, source="--mfu")
    return recorded_mfu(path) or Mfu(
        value=DEFAULT_MFU,
        source="assumed; no bench/results/gpu.json (run bench/bench_gpu.py on a GPU)",
    )


def measure_bytes_per_token(texts: Iterable[str], tokenizer: Any) -> tuple[int, int]:
    """(bytes, tokens) of up to :data:`MEASURE_BYTES` of ``texts``, one end-of-text token per
    text counted, as the packed token files hold them."""
    n_bytes = n_tokens = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal n_tokens
        n_tokens += sum(len(e.ids) + 1 for e in tokenizer.encode_batch(batch))
        batch.clear()

    for text in texts:
        batch.append(text)
        n_bytes += len(text.encode("utf-8"))
        if len(batch) >= 256:
            flush()
        if n_bytes >= MEASURE_BYTES:
            break
    if batch:
        flush()
    return n_bytes, n_tokens


def workspace_texts(workspace: Path, arena: str) -> tuple[list[str], str]:
    """The accepted train split of the workspace, else the arena's seed, and which it was."""
    from dte_aar.arena import load_arena
    from dte_aar.store import DB_FILE, Store

    if (workspace / DB_FILE).exists():
        with Store.open(workspace, readonly=True) as store:
            texts = [text for _, text in store.corpus("train")]
        if texts:
            return texts, f"{workspace}'s train corpus"
    return [e.text for e in load_arena(arena).seed], f"the {arena} arena's seed"


# ---------------------------------------------------------------------- the plan
class PlanRequest(BaseModel):
    """Everything a plan depends on; the CLI fills it from options and the workspace."""

    shape: dict[str, int | bool] = Field(description="ModelConfig fields")
    preset: str | None = None
    corpus_tokens: int = Field(gt=0)
    corpus_bytes: int | None = None
    bytes_per_token: float = Field(gt=0)
    bytes_per_token_source: str
    epochs: float = Field(1.0, gt=0)
    stages: list[StageSettings] = Field(default_factory=default_stages)
    layers_per_cycle: int = 1
    batch_size: int = 16
    micro_batch: int | None = None
    gates: Gates = "budget"
    schedules: list[Schedule] = list(SCHEDULES)
    gpus: int = Field(1, gt=0)
    gpu_names: list[str] = list(GPUS)
    mfu: Mfu
    price_per_hour: float | None = None


def model_config(shape: dict[str, int | bool]) -> ModelConfig:
    return ModelConfig(**shape)  # type: ignore[arg-type]


def make_plan(req: PlanRequest) -> Plan:
    cfg = model_config(req.shape)
    depth = max(s.last_layer or 0 for s in req.stages)
    trained = req.corpus_tokens * req.epochs
    local = max(1, req.batch_size // req.gpus)
    micro = min(req.micro_batch or local, local)
    sharded = req.gpus > 1 and req.preset in FSDP_PRESETS
    schedules = []
    full_flops = sum(c.flops for c in schedule_cycles("full", cfg, req.stages, 1, "pass", trained))
    for name in req.schedules:
        cycles = schedule_cycles(name, cfg, req.stages, req.layers_per_cycle, req.gates, trained)
        mems = [memory(cfg, c.layers, c.trainable_top, micro, req.gpus, sharded) for c in cycles]
        peak = max(range(len(cycles)), key=lambda i: mems[i].needed)
        flops = sum(c.flops for c in cycles)
        schedules.append(
            ScheduleEstimate(
                schedule=name,
                cycles=cycles,
                flops=flops,
                ratio_to_full=flops / full_flops,
                steps_per_cycle=cycles[0].tokens / (req.batch_size * cfg.seq_len),
                peak_memory=mems[peak],
                peak_cycle=cycles[peak].cycle,
            )
        )
    estimates = []
    for key in req.gpu_names:
        gpu = GPUS[key]
        if req.price_per_hour is not None:
            gpu = gpu.model_copy(update={"price_per_hour": req.price_per_hour})
        for s in schedules:
            c = s.cycles[s.peak_cycle - 1]
            hours = gpu_hours(s.flops, gpu, req.mfu.value, req.gpus)
            best = max_micro_batch(cfg, c.layers, c.trainable_top, gpu, req.gpus, sharded)
            need = s.peak_memory.needed
            estimates.append(
                GpuEstimate(
                    gpu=key,
                    schedule=s.schedule,
                    hours=hours,
                    gpu_hours=hours * req.gpus,
                    cost=hours * req.gpus * gpu.price_per_hour,
                    price_per_hour=gpu.price_per_hour,
                    fits=need <= FIT_FRACTION * gpu.memory_gib * 2**30,
                    max_micro_batch=best,
                )
            )
    notes = []
    if depth != cfg.target_layers:
        notes.append(f"the stages grow the model to {depth} layers")
    return Plan(
        model={**req.shape, "preset": req.preset, "layers": depth},
        params=config_num_params(cfg, n_layers=depth),
        trainable_params_full=trainable_params(cfg, depth, None),
        corpus=Corpus(
            bytes=req.corpus_bytes,
            tokens=req.corpus_tokens,
            bytes_per_token=req.bytes_per_token,
            bytes_per_token_source=req.bytes_per_token_source,
            epochs=req.epochs,
            trained_tokens=trained,
        ),
        mfu=req.mfu,
        gpus=req.gpus,
        gates=req.gates,
        batch_size=req.batch_size,
        schedules=schedules,
        estimates=estimates,
        seed=seed_comparison(cfg, trained, req.mfu.value, schedules),
        notes=notes,
    )


def seed_comparison(
    cfg: ModelConfig, trained: float, mfu: float, schedules: list[ScheduleEstimate]
) -> SeedComparison:
    """The seed's "124M model, 1,200 A100-hours" beside this planner's count for GPT-2 small's
    shape (12 layers of the small width, no priors: 124,439,808 parameters with the head tied
    to the embedding; untying adds no FLOPs), at this corpus and at 20 tokens/parameter."""
    gpt2 = replace(PRESETS["small"], n_layers=12, target_layers=12, cooc_rank=0, key_bias=False)
    params = config_num_params(gpt2) - gpt2.d_model * gpt2.vocab_size  # tied head
    per_token = flops_per_token(gpt2, StepShape(12))
    a100 = GPUS["A100"]
    here = gpu_hours(per_token * trained, a100, mfu)
    chinchilla = CHINCHILLA_TOKENS_PER_PARAM * params
    at_chinchilla = gpu_hours(per_token * chinchilla, a100, mfu)
    claim = SEED_CLAIM["a100_hours"]
    return SeedComparison(
        claim_params=int(SEED_CLAIM["params"]),
        claim_a100_hours=claim,
        gpt2_params=params,
        gpt2_flops_per_token=per_token,
        a100_hours_this_corpus=here,
        ratio_this_corpus=claim / here,
        chinchilla_tokens=chinchilla,
        a100_hours_chinchilla=at_chinchilla,
        ratio_chinchilla=claim / at_chinchilla,
        tokens_the_claim_buys=claim * 3600 * a100.peak_tflops * 1e12 * mfu / per_token,
        a100_hours_this_plan={s.schedule: gpu_hours(s.flops, a100, mfu) for s in schedules},
    )


def _shape_fields(model: dict[str, Any]) -> dict[str, int | bool]:
    keys = ("vocab_size", "d_model", "n_heads", "d_ff", "seq_len", "cooc_rank", "key_bias")
    return {k: model[k] for k in keys}
