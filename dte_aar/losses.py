"""The training objective: one function per loss term, each with its formula and its reason.

    loss = CE_w + identity_w * L_identity + persona_w * L_persona + coherence_w * L_coherence

Notation: x, y are the input and target ids of a batch (B, T); h the final norm's output
(B, T, d); p the softmax of the logits; S the self-reference token ids (the identity's phrases
as tokens, e.g. "I", " my", " Deep Tree Echo"); cos(u, v) = u.v / (|u| |v|).

Every term is a *sum over its units divided by the unit count of the whole global batch*
(weights for CE, sequences for identity, positions for persona and coherence). The trainer
counts the units once per optimizer step (:func:`denominators`) and each micro-batch, on each
rank, adds its share, so gradient accumulation and data parallelism compute exactly the
gradient of one big batch. A term with weight 0 is not computed at all (switched off).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.nn import functional as F

from dte_aar.model import GrowingTransformer

TERMS = ("ce", "identity", "persona", "coherence")
ANCHOR_WINDOWS = 64  # seed windows the identity anchor averages over
_EPS = 1e-8


@dataclass(frozen=True)
class Objective:
    """What one training phase minimises. The default is plain mean cross-entropy."""

    token_weights: torch.Tensor | None = None  # (V,) CE weight per target id; None: all 1
    self_ids: torch.Tensor | None = None  # (k,) self-reference token ids
    anchor: torch.Tensor | None = None  # (d,) identity anchor: mean seed hidden state
    self_anchor: torch.Tensor | None = None  # (d,) mean seed hidden state at self-references
    identity: float = 0.0
    persona: float = 0.0
    coherence: float = 0.0

    def weight(self, term: str) -> float:
        """The weight of ``term``; 0 when it is off or lacks what it needs."""
        if term == "ce":
            return 1.0
        needs = {
            "identity": self.anchor,
            "persona": None if self.self_ids is None else self.self_anchor,
            "coherence": self.self_ids,
        }[term]
        return getattr(self, term) if needs is not None else 0.0

    def active(self) -> list[str]:
        return [t for t in TERMS if self.weight(t) > 0]

    def to(self, device: torch.device) -> Objective:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            token_weights=move(self.token_weights),
            self_ids=move(self.self_ids),
            anchor=move(self.anchor),
            self_anchor=move(self.self_anchor),
        )


def token_weights(vocab_size: int, self_ids: list[int], boost: float) -> torch.Tensor:
    """Per-target CE weights: ``boost`` for the self-reference ids, 1 for every other token."""
    weights = torch.ones(vocab_size)
    if self_ids:
        weights[torch.as_tensor(self_ids, dtype=torch.long)] = boost
    return weights


# --------------------------------------------------------------------------- the terms
def weighted_cross_entropy(
    logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None, total: float
) -> torch.Tensor:
    """CE_w = sum_i w(y_i) * -log p(y_i) / sum_i w(y_i)   (targets -1 ignored)

    Why: the seed's token weighting. Predicting the identity's own words ("I", "Deep Tree
    Echo") counts ``self_reference_boost`` times as much as any other token, so the model
    learns how it refers to itself first. Normalising by the weight sum (not the token count)
    keeps the loss on the CE scale, comparable to the held-out loss.
    """
    ce = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        y.reshape(-1),
        ignore_index=-1,
        reduction="none",
    )
    valid = y.reshape(-1) >= 0
    w = valid.float() if weights is None else weights[y.reshape(-1).clamp(min=0)] * valid
    return (w * ce).sum() / total


def identity_consistency(hidden: torch.Tensor, anchor: torch.Tensor, n_seqs: int) -> torch.Tensor:
    """L_identity = (1/B) sum_b (1 - cos(mean_t h[b, t], a))

    a, the identity anchor, is the mean final hidden state over the seed corpus (train split),
    taken with the model as it enters the training phase (:func:`identity_anchor`).

    Why: each cycle trains on a growing share of the model's own synthetic text, and
    model-collapse work shows such data drifts a model away from its origin. This term keeps
    the mean representation of every training sequence pointing where the identity's own text
    points. It is per sequence (not per batch) so it splits exactly over micro-batches.
    """
    mean = hidden.float().mean(dim=1)  # (B, d)
    cos = F.cosine_similarity(mean, anchor.float().expand_as(mean), dim=-1, eps=_EPS)
    return (1.0 - cos).sum() / n_seqs


def persona_consistency(
    hidden: torch.Tensor,
    x: torch.Tensor,
    self_ids: torch.Tensor,
    self_anchor: torch.Tensor,
    n_positions: float,
) -> torch.Tensor:
    """L_persona = (1/N) sum_{(b,t): x[b,t] in S} (1 - cos(h[b, t], a_self))

    a_self is the mean final hidden state at the seed's self-reference positions (the state
    right after the model has read "I" or "Deep Tree Echo"); N counts such positions in the
    global batch (0 of them: the term is 0).

    Why (stage 3, persona): the persona is what follows when the model names itself. Pulling
    the state after every self-reference toward the seed's makes "I ..." continue as the
    identity does, however the surrounding synthetic text drifts.
    """
    mask = torch.isin(x, self_ids)
    h = hidden[mask].float()  # (n, d)
    cos = F.cosine_similarity(h, self_anchor.float().expand_as(h), dim=-1, eps=_EPS)
    return (1.0 - cos).sum() / max(n_positions, 1.0)


def self_reference_coherence(
    logits: torch.Tensor, y: torch.Tensor, self_ids: torch.Tensor, n_positions: float
) -> torch.Tensor:
    """L_coherence = (1/N) sum_{(b,t): y[b,t] in S} -log sum_{s in S} p(s | x[b, <=t])

    N counts the positions whose target is a self-reference token in the global batch.

    Why (stage 4, meta-cognitive): where the text refers to itself the model should know it
    is about to, even when unsure of the form ("I", "me", "Echo"). CE rewards only the exact
    token; this set-level term rewards mass on the self-reference set as a whole, so the
    model's sense of *when* it speaks about itself stays coherent across forms.
    """
    mask = torch.isin(y, self_ids)
    logp = F.log_softmax(logits[mask].float(), dim=-1)  # (n, V)
    return -torch.logsumexp(logp[:, self_ids], dim=-1).sum() / max(n_positions, 1.0)


# --------------------------------------------------------------------------- together
def denominators(obj: Objective, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Unit counts of the *global* batch (x, y): what each term divides its sum by."""
    valid = y >= 0
    if obj.token_weights is None:
        ce = float(valid.sum())
    else:
        ce = float((obj.token_weights[y.clamp(min=0)] * valid).sum())
    counts = {"ce": max(ce, _EPS), "identity": float(x.size(0))}
    if obj.self_ids is not None:
        counts["persona"] = float(torch.isin(x, obj.self_ids).sum())
        counts["coherence"] = float(torch.isin(y, obj.self_ids).sum())
    return counts


def loss_terms(
    obj: Objective,
    logits: torch.Tensor,
    hidden: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    counts: dict[str, float],
) -> dict[str, torch.Tensor]:
    """This micro-batch's share of every active term (unweighted)."""
    terms = {"ce": weighted_cross_entropy(logits, y, obj.token_weights, counts["ce"])}
    if obj.weight("identity"):
        terms["identity"] = identity_consistency(hidden, obj.anchor, int(counts["identity"]))
    if obj.weight("persona"):
        terms["persona"] = persona_consistency(
            hidden, x, obj.self_ids, obj.self_anchor, counts["persona"]
        )
    if obj.weight("coherence"):
        terms["coherence"] = self_reference_coherence(logits, y, obj.self_ids, counts["coherence"])
    return terms


def total_loss(obj: Objective, terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum_k weight_k * term_k (CE, always present, has weight 1)."""
    return sum(obj.weight(name) * value for name, value in terms.items())  # type: ignore[return-value]


# --------------------------------------------------------------------------- the anchor
@torch.no_grad()
def identity_anchor(
    model: GrowingTransformer,
    tokens: np.ndarray,
    self_ids: list[int] | None = None,
    seq_len: int | None = None,
    max_windows: int = ANCHOR_WINDOWS,
    batch_size: int = 8,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(a, a_self): the mean final hidden state over up to ``max_windows`` non-overlapping
    windows of ``tokens`` (the seed), and its mean at self-reference positions (None if the
    seed has none). Evaluated in eval mode, in float32, on the model's device.

    Why the mean hidden state and not, say, the mean embedding of the self-reference tokens:
    the losses compare final hidden states, and only the model's own hidden states live in
    that space; embeddings (and the untied head's rows) are other spaces.
    """
    device = next(model.parameters()).device
    T = min(seq_len or model.config.seq_len, max(1, len(tokens) - 1), model.config.seq_len)
    n = min(max_windows, max(1, len(tokens) // T))
    windows = np.stack([np.asarray(tokens[i * T : (i + 1) * T]) for i in range(n)])
    ids = torch.from_numpy(windows.astype(np.int64)).to(device)
    sid = torch.as_tensor(self_ids or [], dtype=torch.long, device=device)
    total = torch.zeros(model.config.d_model, device=device)
    self_total = torch.zeros_like(total)
    n_self = 0
    was_training = model.training
    model.eval()
    for b in range(0, n, batch_size):
        x = ids[b : b + batch_size]
        _, _, hidden = model(x, return_hidden=True)
        hidden = hidden.float()
        total += hidden.sum(dim=(0, 1))
        mask = torch.isin(x, sid)
        self_total += hidden[mask].sum(dim=0)
        n_self += int(mask.sum())
    model.train(was_training)
    anchor = total / ids.numel()
    return anchor, (self_total / n_self if n_self else None)
