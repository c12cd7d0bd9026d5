"""The loss terms: each is the formula its docstring states, each changes the gradient when
switched on (and nothing when off), and each splits exactly over micro-batches."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from dte_aar.losses import (
    Objective,
    denominators,
    identity_anchor,
    identity_consistency,
    loss_terms,
    persona_consistency,
    self_reference_coherence,
    token_weights,
    total_loss,
    weighted_cross_entropy,
)
from dte_aar.model import GrowingTransformer, ModelConfig

CFG = ModelConfig(vocab_size=30, d_model=16, n_heads=2, d_ff=32, seq_len=12, n_layers=2)
SELF_IDS = [3, 7]
G = torch.Generator().manual_seed(0)
X = torch.randint(0, 30, (4, 12), generator=G)
X[:, ::4] = 3  # self-references in every row, as inputs and as targets
Y = torch.roll(X, -1, dims=1)
Y[0, -1] = -1  # an ignored target


def model() -> GrowingTransformer:
    return GrowingTransformer(CFG, generator=torch.Generator().manual_seed(1))


def full_objective(m: GrowingTransformer, **weights: float) -> Objective:
    anchor, self_anchor = identity_anchor(m, torch.randint(0, 30, (60,), generator=G).numpy())
    return Objective(
        token_weights=token_weights(30, SELF_IDS, 1.2),
        self_ids=torch.tensor(SELF_IDS),
        anchor=anchor,
        self_anchor=anchor if self_anchor is None else self_anchor,
        **weights,
    )


def grads(m: GrowingTransformer, obj: Objective) -> dict[str, torch.Tensor]:
    m.zero_grad(set_to_none=True)
    logits, _, hidden = m(X, return_hidden=True)
    total_loss(obj, loss_terms(obj, logits, hidden, X, Y, denominators(obj, X, Y))).backward()
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def differs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.allclose(a[n], b[n], rtol=0, atol=1e-9) for n in a)


# --------------------------------------------------------------------------- formulas
def test_weighted_ce_is_the_weighted_mean() -> None:
    logits = torch.randn(4, 12, 30, generator=G)
    w = token_weights(30, SELF_IDS, 1.2)
    assert w[3] == w[7] == pytest.approx(1.2) and w[0] == 1
    ce = F.cross_entropy(logits.view(-1, 30), Y.view(-1), ignore_index=-1, reduction="none")
    valid = Y.view(-1) >= 0
    wt = torch.where(torch.isin(Y.view(-1), torch.tensor(SELF_IDS)), 1.2, 1.0) * valid
    want = (wt * ce).sum() / wt.sum()
    got = weighted_cross_entropy(logits, Y, w, float(wt.sum()))
    torch.testing.assert_close(got, want)
    plain = weighted_cross_entropy(logits, Y, None, float(valid.sum()))
    torch.testing.assert_close(
        plain, F.cross_entropy(logits.view(-1, 30), Y.view(-1), ignore_index=-1)
    )


def test_identity_is_one_minus_cosine_of_each_sequence_mean() -> None:
    hidden = torch.randn(4, 12, 16, generator=G)
    anchor = torch.randn(16, generator=G)
    want = sum(1 - F.cosine_similarity(hidden[b].mean(0), anchor, dim=0) for b in range(4)) / 4
    torch.testing.assert_close(identity_consistency(hidden, anchor, 4), want)
    assert identity_consistency(anchor.expand(4, 12, 16), anchor, 4).abs() < 1e-6


def test_persona_pulls_self_reference_positions_only() -> None:
    hidden = torch.randn(4, 12, 16, generator=G)
    a = torch.randn(16, generator=G)
    mask = torch.isin(X, torch.tensor(SELF_IDS))
    want = (1 - F.cosine_similarity(hidden[mask], a.expand(int(mask.sum()), 16), dim=-1)).mean()
    got = persona_consistency(hidden, X, torch.tensor(SELF_IDS), a, float(mask.sum()))
    torch.testing.assert_close(got, want)
    hidden2 = hidden.clone()
    hidden2[~mask] = 5.0  # other positions do not matter
    torch.testing.assert_close(
        persona_consistency(hidden2, X, torch.tensor(SELF_IDS), a, float(mask.sum())), want
    )


def test_coherence_is_the_set_level_cross_entropy() -> None:
    logits = torch.randn(4, 12, 30, generator=G)
    mask = torch.isin(Y, torch.tensor(SELF_IDS))
    p = logits[mask].softmax(-1)
    want = -torch.log(p[:, 3] + p[:, 7]).mean()
    got = self_reference_coherence(logits, Y, torch.tensor(SELF_IDS), float(mask.sum()))
    torch.testing.assert_close(got, want)
    no_self = torch.zeros_like(Y)
    assert self_reference_coherence(logits, no_self, torch.tensor(SELF_IDS), 0.0) == 0


def test_anchor_is_the_mean_hidden_state() -> None:
    m = model()
    tokens = torch.randint(0, 30, (40,), generator=G)
    tokens[::5] = 7
    anchor, self_anchor = identity_anchor(m, tokens.numpy(), SELF_IDS, max_windows=3)
    windows = tokens[:36].view(3, 12)
    with torch.no_grad():
        hidden = m(windows, return_hidden=True)[2]
    torch.testing.assert_close(anchor, hidden.mean((0, 1)))
    mask = torch.isin(windows, torch.tensor(SELF_IDS))
    torch.testing.assert_close(self_anchor, hidden[mask].mean(0))
    tokens[tokens == 29] = 0
    assert identity_anchor(m, tokens.numpy(), [29], max_windows=3)[1] is None


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("term", ["identity", "persona", "coherence"])
def test_each_auxiliary_term_changes_the_gradient(term: str) -> None:
    m = model()
    off = grads(m, full_objective(m))
    on_obj = full_objective(m, **{term: 0.1})
    assert on_obj.active() == ["ce", term]
    on = grads(m, on_obj)
    assert differs(off, on), term


def test_the_self_reference_boost_changes_the_gradient() -> None:
    m = model()
    flat = full_objective(m)
    plain = Objective(token_weights=token_weights(30, SELF_IDS, 1.0))
    boosted = grads(m, flat)
    assert differs(grads(m, plain), boosted)
    assert not differs(grads(m, Objective()), grads(m, plain))  # boost 1 is plain CE


def test_switched_off_terms_are_not_computed() -> None:
    m = model()
    obj = full_objective(m)  # all auxiliary weights 0
    logits, _, hidden = m(X, return_hidden=True)
    assert set(loss_terms(obj, logits, hidden, X, Y, denominators(obj, X, Y))) == {"ce"}
    no_anchor = Objective(identity=0.1, persona=0.1, coherence=0.1)  # nothing to pull toward
    assert no_anchor.active() == ["ce"]


def test_terms_split_exactly_over_micro_batches() -> None:
    m = model()
    obj = full_objective(m, identity=0.1, persona=0.05, coherence=0.05)
    counts = denominators(obj, X, Y)
    with torch.no_grad():
        logits, _, hidden = m(X, return_hidden=True)
    whole = loss_terms(obj, logits, hidden, X, Y, counts)
    parts = [loss_terms(obj, logits[s], hidden[s], X[s], Y[s], counts)
             for s in (slice(0, 1), slice(1, 3), slice(3, 4))]  # fmt: skip
    for name, value in whole.items():
        torch.testing.assert_close(sum(p[name] for p in parts), value)
        assert math.isfinite(value.item())
