"""The training loop: it learns, it is reproducible, it never applies a non-finite step, and
the schedule and parameter groups are what the docstring says."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from dte_aar.config import TrainSettings
from dte_aar.model import GrowingTransformer, ModelConfig
from dte_aar.tokens import PackedTokens
from dte_aar.train import configure_optimizer, lr_at, resolve_device, train

CFG = ModelConfig(vocab_size=40, d_model=32, n_heads=2, d_ff=64, seq_len=16, n_layers=2)
SETTINGS = TrainSettings(batch_size=8, lr=1e-2, warmup_steps=3, seq_len=16)


@pytest.fixture
def data(tmp_path: Path) -> PackedTokens:
    """A learnable stream: short counting runs, so next-token loss can fall far below ln(V)."""
    packed = PackedTokens(tmp_path / "train.bin", vocab_size=CFG.vocab_size)
    packed.append([(i, list(range(1 + i % 5, 1 + i % 5 + 12))) for i in range(60)])
    return packed


def model(seed: int = 0) -> GrowingTransformer:
    return GrowingTransformer(CFG, generator=torch.Generator().manual_seed(seed))


class Recorder:
    def __init__(self) -> None:
        self.metrics: list[tuple[str, float, int | None]] = []
        self.advances: list[dict[str, Any]] = []

    def log(self, name: str, value: float, step: int | None) -> None:
        self.metrics.append((name, value, step))

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.advances.append({"n": n, **fields})

    def close(self) -> None:
        pass

    def values(self, name: str) -> list[float]:
        return [v for n, v, _ in self.metrics if n == name]


def test_it_learns_and_reports(data: PackedTokens) -> None:
    rec = Recorder()
    stats = train(model(), data, 40, SETTINGS, seed=1, progress_task=rec, log_metric=rec.log)
    losses = rec.values("train_loss")
    assert len(losses) == 40 and len(rec.advances) == 40
    assert all(a["n"] == 1 and "loss" in a and a["tok_s"] > 0 for a in rec.advances)
    assert [s for n, _, s in rec.metrics if n == "train_loss"] == list(range(40))
    assert losses[0] > math.log(CFG.vocab_size) - 0.5
    assert stats["train_loss"] < 0.5 * losses[0]
    assert stats["skipped_steps"] == 0 and stats["tokens"] == 40 * 8 * 16
    assert stats["tokens_per_s"] > 0 and math.isfinite(stats["last_loss"])


def test_same_seed_same_run_other_seed_other_run(data: PackedTokens) -> None:
    def run(seed: int) -> tuple[list[float], torch.Tensor]:
        rec = Recorder()
        m = model()
        train(m, data, 8, SETTINGS, seed=seed, log_metric=rec.log)
        return rec.values("train_loss"), m.head.weight.detach().clone()

    a, b, c = run(5), run(5), run(6)
    assert a[0] == b[0]
    assert torch.equal(a[1], b[1])
    assert a[0] != c[0]


def test_frozen_prefix_is_untouched_by_training(data: PackedTokens) -> None:
    m = model()
    m.set_trainable(1)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    train(m, data, 5, SETTINGS, seed=0)
    for name, p in m.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == p.requires_grad, name
    assert any(n.startswith("blocks.1.") for n, p in m.named_parameters() if p.requires_grad)


def test_non_finite_loss_skips_the_step(data: PackedTokens, monkeypatch) -> None:
    m = model()
    real_forward = m.forward
    calls = {"n": 0}
    snapshot: dict[str, torch.Tensor] = {}

    def flaky(idx: torch.Tensor, targets: torch.Tensor | None = None):
        calls["n"] += 1
        logits, loss = real_forward(idx, targets)
        if calls["n"] == 3:
            snapshot.update({n: p.detach().clone() for n, p in m.named_parameters()})
            return logits, loss * float("nan")
        if calls["n"] == 4:  # nothing was applied by the NaN step
            for n, p in m.named_parameters():
                assert torch.equal(p, snapshot[n]), n
        return logits, loss

    monkeypatch.setattr(m, "forward", flaky)
    rec = Recorder()
    stats = train(m, data, 5, SETTINGS, seed=0, log_metric=rec.log)
    assert calls["n"] == 5
    assert stats["skipped_steps"] == 1 and math.isfinite(stats["train_loss"])
    assert len(rec.values("train_loss")) == 4 and rec.values("skipped_step") == [1.0]
    assert all(p.grad is None for p in m.parameters())


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    cfg = TrainSettings(lr=1e-3, warmup_steps=4, min_lr_ratio=0.1)
    lrs = [lr_at(s, 20, cfg) for s in range(20)]
    assert lrs[:4] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4])
    assert lrs[4] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))
    assert lrs[-1] > 1e-4 and lr_at(20, 20, cfg) == pytest.approx(1e-4)
    no_warmup = TrainSettings(lr=1e-3, warmup_steps=0)
    assert lr_at(0, 10, no_warmup) == pytest.approx(1e-3)
    assert lr_at(0, 1, TrainSettings(lr=1e-3, warmup_steps=10)) > 0


def test_optimizer_groups_decay_matrices_only() -> None:
    m = model()
    m.set_trainable(1)
    opt = configure_optimizer(m, SETTINGS)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == SETTINGS.weight_decay and no_decay["weight_decay"] == 0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])
    trainable = {id(p) for p in m.parameters() if p.requires_grad}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable
    assert not opt.defaults.get("fused")


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}


def test_seq_len_longer_than_the_model_is_refused(data: PackedTokens) -> None:
    with pytest.raises(ValueError, match="exceeds"):
        train(model(), data, 1, TrainSettings(seq_len=32), seed=0)
