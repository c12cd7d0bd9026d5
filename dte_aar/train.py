"""The training loop, nanoGPT-style: sample a batch, forward, backward, clip, step. That's it.

AdamW over the trainable parameters only (matrices decayed, biases and norms not), linear
warmup then cosine decay to ``min_lr_ratio * lr``, global-norm clipping, bf16 autocast on
CUDA. A step whose loss or gradient norm is not finite is skipped, not applied. Batches come
from a numpy generator seeded by ``seed``, so a CPU run is reproducible bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np
import torch

from dte_aar.model import GrowingTransformer
from dte_aar.tokens import PackedTokens

if TYPE_CHECKING:
    from dte_aar.config import TrainSettings
    from dte_aar.progress import ProgressTask

LogMetric = Callable[[str, float, int | None], None]
EMA_BETA = 0.9  # smoothing of the reported loss


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; anything else is passed to torch."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def configure_optimizer(model: GrowingTransformer, cfg: TrainSettings) -> torch.optim.AdamW:
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
) -> dict[str, float]:
    """Train ``model`` (already on its device) for ``steps`` steps on random windows of ``data``.

    Pass ``optimizer`` to keep it afterwards (to checkpoint it); otherwise one is made.
    Returns train_loss (smoothed), last_loss, tokens_per_s, tokens and skipped_steps.
    """
    device = next(model.parameters()).device
    seq_len = cfg.seq_len or model.config.seq_len
    if seq_len > model.config.seq_len:
        raise ValueError(f"seq_len {seq_len} exceeds the model's {model.config.seq_len}")
    if optimizer is None:
        optimizer = configure_optimizer(model, cfg)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    use_bf16 = amp and device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()
    log = log_metric or (lambda name, value, step: None)

    model.train()
    ema = 0.0
    n_ema = 0
    last_loss = float("nan")
    skipped = 0
    tokens = 0
    t_start = time.perf_counter()
    for step in range(steps):
        t0 = time.perf_counter()
        lr = lr_at(step, steps, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = data.get_batch(rng, cfg.batch_size, seq_len)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast:
            _, loss = model(x, y)
        loss_value = loss.item()
        grad_norm = float("nan")
        if math.isfinite(loss_value):
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip).item()
        if math.isfinite(loss_value) and math.isfinite(grad_norm):
            optimizer.step()
            ema = EMA_BETA * ema + (1 - EMA_BETA) * loss_value
            n_ema += 1
            last_loss = loss_value
        else:
            skipped += 1
            log("skipped_step", 1.0, step)
        optimizer.zero_grad(set_to_none=True)

        tokens += x.numel()
        tok_s = x.numel() / max(time.perf_counter() - t0, 1e-9)
        smoothed = ema / (1 - EMA_BETA**n_ema) if n_ema else float("nan")
        if math.isfinite(loss_value):
            log("train_loss", loss_value, step)
        if math.isfinite(grad_norm):
            log("grad_norm", grad_norm, step)
        log("lr", lr, step)
        if progress_task is not None:
            progress_task.advance(1, loss=smoothed, tok_s=round(tok_s))

    elapsed = max(time.perf_counter() - t_start, 1e-9)
    return {
        "train_loss": ema / (1 - EMA_BETA**n_ema) if n_ema else float("nan"),
        "last_loss": last_loss,
        "tokens_per_s": tokens / elapsed,
        "tokens": float(tokens),
        "skipped_steps": float(skipped),
    }
