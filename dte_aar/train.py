"""The training loop, nanoGPT-style, readable top to bottom. One optimizer step:

1. draw the global batch (``batch_size`` windows) from a generator seeded by (seed, step):
   the same on every rank and the same after a resume, since it depends on the step alone;
2. count the loss units of the whole batch (:func:`dte_aar.losses.denominators`);
3. take this rank's rows, split them into micro-batches (``micro_batch_size``) and for each:
   forward, loss terms, backward; gradients cross ranks on the last micro-batch only;
4. clip the global gradient norm; a non-finite loss or norm skips the step, and
   ``nan_rollback_after`` of those in a row restore the last good snapshot with the LR halved;
5. AdamW step (fused on CUDA) at the warmup + cosine learning rate.

A ``should_stop`` callable, asked after every step, ends the loop early (a daemon's SIGTERM);
the :class:`TrainState` passed in says how far it got and carries the running statistics, so
the caller can checkpoint and a later call with ``start_step=state.step`` continues exactly.

bf16 autocast and (optionally) ``torch.compile`` on CUDA only; on CPU a run is reproducible
bit for bit. With ``activation_cache`` and a frozen prefix, the prefix's output is computed
once for a fixed set of windows (:class:`PrefixCache`) and batches are drawn from those.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dte_aar import distributed
from dte_aar.losses import TERMS, Objective, denominators, loss_terms, total_loss
from dte_aar.model import GrowingTransformer
from dte_aar.tokens import PackedTokens

if TYPE_CHECKING:
    from dte_aar.config import TrainSettings
    from dte_aar.progress import ProgressTask

LogMetric = Callable[[str, float, int | None], None]
EMA_BETA = 0.9  # smoothing of the reported loss
SNAPSHOT_EVERY = 100  # good steps between refreshes of the rollback snapshot
CACHE_BYTES = 1 << 30  # the activation cache holds at most this much


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; anything else is passed to torch."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def configure_optimizer(model: torch.nn.Module, cfg: TrainSettings) -> torch.optim.AdamW:
    """AdamW over trainable parameters: weight decay on matrices (dim >= 2) only."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = bool(params) and params[0].device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)


def lr_at(step: int, steps: int, cfg: TrainSettings) -> float:
    """Linear warmup over ``warmup_steps``, then cosine from ``lr`` down to the floor."""
    warmup = min(cfg.warmup_steps, steps)
    if step < warmup:
        return cfg.lr * (step + 1) / (warmup + 1)
    floor = cfg.lr * cfg.min_lr_ratio
    decay_steps = max(1, steps - warmup)
    ratio = min(1.0, (step - warmup) / decay_steps)
    return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - floor)


def micro_batching(batch_size: int, micro_batch_size: int | None, world: int) -> tuple[int, int]:
    """(sequences per forward pass, micro-batches per step) for one rank."""
    local, rest = divmod(batch_size, world)
    if rest or not local:
        raise ValueError(f"batch_size {batch_size} does not split over {world} ranks")
    micro = min(micro_batch_size or local, local)
    if local % micro:
        raise ValueError(f"{local} sequences per rank do not split into micro-batches of {micro}")
    return micro, local // micro


@dataclass
class TrainState:
    """Where a (possibly stopped) training phase stands: the next step to run and the
    running numbers a continuation needs to report and behave as if never stopped."""

    step: int = 0
    ema: dict[str, float] = field(default_factory=dict)
    n_ema: int = 0
    lr_scale: float = 1.0
    skipped: int = 0
    rollbacks: int = 0
    tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class PrefixCache:
    """The frozen prefix's output for a fixed set of windows, computed once per phase.

    While the freezing does not change, the frozen blocks are a fixed function of the input,
    so recomputing them every step is waste. The windows are the non-overlapping ``seq_len``
    windows of the data (at most ``steps * batch_size`` of them and ``CACHE_BYTES`` of
    hidden states; a seeded random subset when there are more), and each step draws its batch
    from them with replacement: no random offsets, but a window costs one prefix pass a phase.
    """

    def __init__(
        self,
        model: GrowingTransformer,
        data: PackedTokens,
        seq_len: int,
        max_windows: int,
        seed: int,
        chunk: int,
        autocast: Any,
    ) -> None:
        tokens = data.memmap()
        starts = np.arange(0, len(tokens) - seq_len, seq_len)
        per_window = seq_len * model.config.d_model * 4
        keep = max(1, min(max_windows, CACHE_BYTES // per_window))
        if len(starts) > keep:
            starts = np.sort(np.random.default_rng(seed).choice(starts, keep, replace=False))
        device = next(model.parameters()).device
        windows = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
        ids = torch.from_numpy(windows).to(device)
        self.x, self.y = ids[:, :-1], ids[:, 1:]
        with autocast:
            self.h = torch.cat(
                [model.frozen_prefix(self.x[i : i + chunk]) for i in range(0, len(starts), chunk)]
            )

    def __len__(self) -> int:
        return len(self.x)

    def batch(
        self, rng: np.random.Generator, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(rng.integers(0, len(self), size=batch_size)).to(self.x.device)
        return self.x[idx], self.y[idx], self.h[idx]


class Snapshot:
    """The last good model and optimizer state, kept on CPU: what a NaN rollback restores."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.take()

    def take(self) -> None:
        state = self.model.state_dict()
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        self.optim = _to_cpu(copy.deepcopy(self.optimizer.state_dict()))

    def restore(self) -> None:
        self.model.load_state_dict(self.weights)
        self.optimizer.load_state_dict(copy.deepcopy(self.optim))


def _to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.to("cpu")
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def train(
    model: GrowingTransformer,
    data: PackedTokens,
    steps: int,
    cfg: TrainSettings,
    seed: int,
    progress_task: ProgressTask | None = None,
    log_metric: LogMetric | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    amp: bool = True,
    objective: Objective | None = None,
    start_step: int = 0,
    stop_step: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    state: TrainState | None = None,
) -> dict[str, float]:
    """Train ``model`` (on its device) for steps ``start_step`` up to ``stop_step`` (default
    ``steps``) of a ``steps``-step schedule, on random windows of ``data``.

    Pass ``optimizer`` to keep it afterwards (to checkpoint it); otherwise one is made.
    ``objective`` is the loss (plain cross-entropy by default). Under torchrun the model is
    wrapped in DDP here (an FSDP-sharded one is used as is). Returns train_loss (smoothed
    total), last_loss, one smoothed value per active term (loss_ce, ...), tokens_per_s,
    tokens, skipped_steps and rollbacks; and ``stopped_at_step`` when ``should_stop`` ended it.

    ``state`` (updated in place) carries the running statistics across a stop: pass the one a
    stopped call left, with ``start_step=state.step``. When ``should_stop()`` turns true the
    loop ends after the current step; ``state.step < stop_step`` then tells the caller.
    """
    device = next(model.parameters()).device
    seq_len = cfg.seq_len or model.config.seq_len
    if seq_len > model.config.seq_len:
        raise ValueError(f"seq_len {seq_len} exceeds the model's {model.config.seq_len}")
    if optimizer is None:
        optimizer = configure_optimizer(model, cfg)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    objective = (objective or Objective()).to(device)
    active = objective.active()
    rank, world = distributed.world()
    micro, n_micro = micro_batching(cfg.batch_size, cfg.micro_batch_size, world)
    torch.manual_seed(seed)
    use_bf16 = amp and device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()
    log = log_metric or (lambda name, value, step: None)
    stop_step = steps if stop_step is None else stop_step

    ddp = distributed.wrap(model)  # DDP under torchrun; the model itself otherwise
    module = torch.compile(ddp) if cfg.compile and device.type == "cuda" else ddp
    cache = None
    if cfg.activation_cache and model.n_frozen_blocks and not distributed.is_sharded(model):
        budget = steps * cfg.batch_size  # the whole schedule's: a resumed phase draws alike
        cache = PrefixCache(model, data, seq_len, budget, seed, micro, autocast)
    snapshot = Snapshot(model, optimizer)

    model.train()
    state = state if state is not None else TrainState(step=start_step)
    ema = {name: state.ema.get(name, 0.0) for name in ("total", *active)}
    n_ema = state.n_ema
    last_loss = float("nan")
    skipped, rollbacks, lr_scale = state.skipped, state.rollbacks, state.lr_scale
    bad_in_a_row = 0
    tokens = tokens_at_start = state.tokens
    t_start = time.perf_counter()
    for step in range(start_step, stop_step):
        t0 = time.perf_counter()
        lr = lr_at(step, steps, cfg) * lr_scale
        for group in optimizer.param_groups:
            group["lr"] = lr

        # The global batch, identical on every rank; then this rank's micro-batches of it.
        rng = np.random.default_rng((seed, step))
        if cache is not None:
            x, y, prefix = cache.batch(rng, cfg.batch_size)
        else:
            x, y = data.get_batch(rng, cfg.batch_size, seq_len)
            prefix = None
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        counts = denominators(objective, x, y)
        sums = torch.zeros(len(TERMS), device=device)
        for i in range(n_micro):
            rows = slice((rank * n_micro + i) * micro, (rank * n_micro + i + 1) * micro)
            xm, ym = x[rows], y[rows]
            with distributed.grad_sync(ddp, enabled=i == n_micro - 1):
                with autocast:
                    logits, _, hidden = module(
                        xm, prefix_hidden=None if prefix is None else prefix[rows],
                        return_hidden=True,
                    )  # fmt: skip
                    terms = loss_terms(objective, logits, hidden, xm, ym, counts)
                    loss = total_loss(objective, terms)
                # DDP averages gradients over ranks; each rank's loss is its share of a sum.
                (loss * world).backward()
            for j, name in enumerate(TERMS):
                if name in terms:
                    sums[j] += terms[name].detach().float()
        distributed.average_replicated_grads(model)
        values = dict(zip(TERMS, distributed.all_reduce_sum(sums).tolist(), strict=True))
        loss_value = sum(objective.weight(t) * values[t] for t in active)
        norm = distributed.grad_norm(params, cfg.grad_clip)

        if math.isfinite(loss_value) and math.isfinite(norm):
            optimizer.step()
            bad_in_a_row = 0
            n_ema += 1
            for name in ema:
                value = loss_value if name == "total" else values[name]
                ema[name] = EMA_BETA * ema[name] + (1 - EMA_BETA) * value
            last_loss = loss_value
            if n_ema % SNAPSHOT_EVERY == 0:
                snapshot.take()
        else:
            skipped += 1
            bad_in_a_row += 1
            log("skipped_step", 1.0, step)
            if bad_in_a_row >= cfg.nan_rollback_after:
                snapshot.restore()
                lr_scale *= 0.5
                rollbacks += 1
                bad_in_a_row = 0
                log("nan_rollback", lr_scale, step)  # the value is the new LR multiplier
        optimizer.zero_grad(set_to_none=True)

        tokens += x.numel()
        tok_s = x.numel() / max(time.perf_counter() - t0, 1e-9)
        if math.isfinite(loss_value):
            log("train_loss", loss_value, step)
            for name in active:
                log(f"loss_{name}", values[name], step)
        if math.isfinite(norm):
            log("grad_norm", norm, step)
        log("lr", lr, step)
        if progress_task is not None:
            smoothed = ema["total"] / (1 - EMA_BETA**n_ema) if n_ema else float("nan")
            progress_task.advance(1, loss=smoothed, tok_s=round(tok_s))
        state.step, state.ema, state.n_ema = step + 1, dict(ema), n_ema
        state.lr_scale, state.skipped, state.rollbacks = lr_scale, skipped, rollbacks
        state.tokens = tokens
        if should_stop is not None and step + 1 < stop_step and should_stop():
            break

    early = {"stopped_at_step": float(state.step)} if state.step < stop_step else {}
    elapsed = max(time.perf_counter() - t_start, 1e-9)
    debias = 1 - EMA_BETA**n_ema if n_ema else float("nan")
    stats = {f"loss_{name}": ema[name] / debias for name in active}
    return {
        "train_loss": ema["total"] / debias,
        **stats,
        "last_loss": last_loss,
        "tokens_per_s": (tokens - tokens_at_start) / elapsed,
        "tokens": float(tokens),
        "skipped_steps": float(skipped),
        "rollbacks": float(rollbacks),
        **early,
    }
