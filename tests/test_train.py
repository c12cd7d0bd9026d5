"""The training loop: it learns, it is reproducible (resumed runs and accumulated batches
included), it never applies a non-finite step and rolls back after repeated ones, the
activation cache changes nothing but the cost, and the schedule and parameter groups are what
the docstring says."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from dte_aar.checkpoint import load_checkpoint, load_optimizer_state, save_checkpoint
from dte_aar.config import TrainSettings
from dte_aar.losses import Objective, identity_anchor, token_weights
from dte_aar.model import GrowingTransformer, ModelConfig
from dte_aar.tokens import PackedTokens
from dte_aar.train import (
    PrefixCache,
    TrainState,
    configure_optimizer,
    lr_at,
    resolve_device,
    train,
)

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


def nan_on_calls(monkeypatch, m: GrowingTransformer, calls: set[int]) -> dict[str, Any]:
    """Make the forward pass return NaN logits on the given (1-based) calls."""
    real_forward = m.forward
    seen: dict[str, Any] = {"n": 0, "params": {}}

    def flaky(idx: torch.Tensor, *args: Any, **kwargs: Any):
        seen["n"] += 1
        seen["params"][seen["n"]] = {n: p.detach().clone() for n, p in m.named_parameters()}
        logits, loss, *rest = real_forward(idx, *args, **kwargs)
        if seen["n"] in calls:
            logits = logits * float("nan")
        return (logits, loss, *rest)

    monkeypatch.setattr(m, "forward", flaky)
    return seen


def test_non_finite_loss_skips_the_step(data: PackedTokens, monkeypatch) -> None:
    m = model()
    seen = nan_on_calls(monkeypatch, m, {3})
    rec = Recorder()
    stats = train(m, data, 5, SETTINGS, seed=0, log_metric=rec.log)
    assert seen["n"] == 5
    for name, p in seen["params"][3].items():  # nothing was applied by the NaN step
        assert torch.equal(p, seen["params"][4][name]), name
    assert stats["skipped_steps"] == 1 and stats["rollbacks"] == 0
    assert math.isfinite(stats["train_loss"])
    assert len(rec.values("train_loss")) == 4 and rec.values("skipped_step") == [1.0]
    assert all(p.grad is None for p in m.parameters())


def test_repeated_nans_roll_back_with_half_the_learning_rate(data, monkeypatch) -> None:
    m = model()
    seen = nan_on_calls(monkeypatch, m, {3, 4, 5})  # steps 2, 3, 4: three in a row
    rec = Recorder()
    cfg = SETTINGS.model_copy(update={"nan_rollback_after": 3})
    stats = train(m, data, 8, cfg, seed=0, log_metric=rec.log)
    assert stats["skipped_steps"] == 3 and stats["rollbacks"] == 1
    assert [(v, s) for n, v, s in rec.metrics if n == "nan_rollback"] == [(0.5, 4)]
    # Restored to the last good snapshot: the state the phase started from.
    for name, p in seen["params"][1].items():
        assert torch.equal(p, seen["params"][6][name]), name
    lrs = dict((s, v) for n, v, s in rec.metrics if n == "lr")
    assert lrs[4] == pytest.approx(lr_at(4, 8, cfg))
    assert [lrs[s] for s in (5, 6, 7)] == pytest.approx([lr_at(s, 8, cfg) / 2 for s in (5, 6, 7)])
    assert math.isfinite(stats["train_loss"])


def objective(m: GrowingTransformer, data: PackedTokens) -> Objective:
    """Every term on, with self-reference ids that occur in the counting stream."""
    self_ids = [3, 4, 5]
    anchor, self_anchor = identity_anchor(m, data.memmap()[:200], self_ids)
    return Objective(
        token_weights=token_weights(CFG.vocab_size, self_ids, 1.2),
        self_ids=torch.tensor(self_ids),
        anchor=anchor,
        self_anchor=self_anchor,
        identity=0.1,
        persona=0.05,
        coherence=0.05,
    )


def test_all_terms_are_logged_and_returned(data: PackedTokens) -> None:
    m = model()
    rec = Recorder()
    stats = train(m, data, 3, SETTINGS, seed=0, log_metric=rec.log, objective=objective(m, data))
    for term in ("ce", "identity", "persona", "coherence"):
        assert len(rec.values(f"loss_{term}")) == 3 and math.isfinite(stats[f"loss_{term}"])
    ce, total = rec.values("loss_ce"), rec.values("train_loss")
    assert all(t > c for t, c in zip(total, ce, strict=True))  # the auxiliary terms add


def test_gradient_accumulation_equals_the_big_batch(data: PackedTokens) -> None:
    """Same gradients, so the same weights. SGD, not AdamW: Adam divides by sqrt(v), which
    blows float rounding up to lr-sized steps where the true gradient is ~0 (a key's bias,
    which softmax ignores), so weights would differ by more than the gradients do."""

    def run(micro: int | None) -> GrowingTransformer:
        m = model()
        cfg = SETTINGS.model_copy(update={"micro_batch_size": micro})
        sgd = torch.optim.SGD(m.parameters(), lr=cfg.lr, momentum=0.9)
        train(m, data, 4, cfg, seed=2, optimizer=sgd, objective=objective(m, data))
        return m

    big, small = run(None), run(2)
    for (name, a), b in zip(big.state_dict().items(), small.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_micro_batch_must_divide_the_batch(data: PackedTokens) -> None:
    with pytest.raises(ValueError, match="micro-batches"):
        train(model(), data, 1, SETTINGS.model_copy(update={"micro_batch_size": 3}), seed=0)


def test_a_resumed_run_continues_as_the_uninterrupted_one(data, tmp_path: Path) -> None:
    full = model()
    rec_full = Recorder()
    train(
        full, data, 10, SETTINGS, seed=3, log_metric=rec_full.log, objective=objective(full, data)
    )

    part = model()
    obj = objective(part, data)
    opt = configure_optimizer(part, SETTINGS)
    train(part, data, 10, SETTINGS, seed=3, optimizer=opt, objective=obj, stop_step=5)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, part, {"step": 5}, opt)
    resumed, meta = load_checkpoint(path)
    opt = configure_optimizer(resumed, SETTINGS)
    assert load_optimizer_state(path, resumed, opt) == len(list(resumed.parameters()))
    rec = Recorder()
    train(resumed, data, 10, SETTINGS, seed=3, log_metric=rec.log, optimizer=opt, objective=obj,
          start_step=meta["step"])  # fmt: skip
    assert [s for n, _, s in rec.metrics if n == "train_loss"] == list(range(5, 10))
    assert rec.values("train_loss") == pytest.approx(rec_full.values("train_loss")[5:], abs=1e-6)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_a_stop_request_ends_after_the_step_and_the_state_continues_exactly(data) -> None:
    """should_stop ends the loop after the step under way; the TrainState it leaves, passed
    back with start_step, gives the uninterrupted run's weights and reported loss."""
    full = model()
    stats_full = train(full, data, 10, SETTINGS, seed=3, objective=objective(full, data))

    part = model()
    obj, opt = objective(part, data), configure_optimizer(part, SETTINGS)
    asked: list[int] = []
    state = TrainState()

    def stop_after_four() -> bool:
        asked.append(1)
        return len(asked) >= 4

    stats = train(part, data, 10, SETTINGS, seed=3, optimizer=opt, objective=obj,
                  should_stop=stop_after_four, state=state)  # fmt: skip
    assert state.step == 4 and stats["stopped_at_step"] == 4.0
    rest = train(part, data, 10, SETTINGS, seed=3, optimizer=opt, objective=obj,
                 start_step=state.step, state=state)  # fmt: skip
    assert "stopped_at_step" not in rest and state.step == 10
    assert rest["train_loss"] == pytest.approx(stats_full["train_loss"], abs=1e-6)
    for (name, a), b in zip(full.state_dict().items(), part.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_activation_cache_trains_as_recomputing_the_prefix(data, monkeypatch) -> None:
    """The cached prefix is what the frozen blocks compute: reusing it changes nothing."""
    cfg = SETTINGS.model_copy(update={"activation_cache": True})

    def run(recompute: bool) -> tuple[list[float], GrowingTransformer, int]:
        m = model()
        m.set_trainable(1)
        calls = {"n": 0}
        real_prefix = m.frozen_prefix

        def counting(idx: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            return real_prefix(idx)

        monkeypatch.setattr(m, "frozen_prefix", counting)
        if recompute:  # same windows, but the forward recomputes the frozen blocks
            real_batch = PrefixCache.batch
            monkeypatch.setattr(
                PrefixCache, "batch", lambda self, rng, b: (*real_batch(self, rng, b)[:2], None)
            )
        rec = Recorder()
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        train(m, data, 6, cfg, seed=4, log_metric=rec.log)
        monkeypatch.undo()
        for name, p in m.named_parameters():
            assert torch.equal(p, before[name]) != p.requires_grad, name
        return rec.values("train_loss"), m, calls["n"]

    cached, m1, n_prefix = run(recompute=False)
    recomputed, m2, _ = run(recompute=True)
    windows = (len(data) - 1) // 16
    assert n_prefix == math.ceil(windows / SETTINGS.batch_size)  # once per window, in chunks
    assert cached == pytest.approx(recomputed, abs=1e-6)
    torch.testing.assert_close(m1.head.weight, m2.head.weight, rtol=0, atol=1e-6)


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
