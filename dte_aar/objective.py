"""A stage's training objective: which loss terms are on, their weights, and the identity
anchors computed from the arena's seed (train split). Shared by the `progressive` trainer and
`dte ablate`, so an ablation trains with exactly the trainer's losses."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from dte_aar.arena import heldout
from dte_aar.losses import ANCHOR_WINDOWS, Objective, identity_anchor, token_weights
from dte_aar.tokenizer import EOT_ID

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from dte_aar.arena import Arena
    from dte_aar.config import Settings, StageSettings
    from dte_aar.model import GrowingTransformer


def seed_tokens(arena: Arena, settings: Settings, tok: Tokenizer, max_tokens: int) -> np.ndarray:
    """The arena's seed examples of the train split, tokenized: what the anchor is made of."""
    s = settings
    texts = [e.text for e in arena.seed if not heldout(e.origin, s.seed, s.heldout_fraction)]
    out: list[int] = []
    for start in range(0, len(texts), 64):
        if len(out) >= max_tokens:
            break
        for enc in tok.encode_batch(texts[start : start + 64]):
            out += [*enc.ids, EOT_ID]
    return np.asarray(out[:max_tokens], dtype=np.int64)


def stage_objective(
    settings: Settings,
    stage: StageSettings,
    arena: Arena,
    model: GrowingTransformer,
    tok: Tokenizer,
    self_ids: list[int],
) -> Objective:
    """The stage's loss terms (``stage.losses``) at the configured weights; the identity
    anchors from the model as it is now, on the seed's train split."""
    cfg = settings.train
    on = set(stage.losses)
    weights = {
        "identity": cfg.identity_loss_weight if "identity" in on else 0.0,
        "persona": cfg.persona_loss_weight if "persona" in on else 0.0,
        "coherence": cfg.coherence_loss_weight if "coherence" in on else 0.0,
    }
    anchor = self_anchor = None
    if weights["identity"] or weights["persona"]:
        seed = seed_tokens(arena, settings, tok, ANCHOR_WINDOWS * model.config.seq_len)
        if len(seed) > 1:
            anchor, self_anchor = identity_anchor(model, seed, self_ids)
    ids = torch.as_tensor(self_ids, dtype=torch.long) if self_ids else None
    return Objective(
        token_weights=token_weights(model.config.vocab_size, self_ids, cfg.self_reference_boost),
        self_ids=ids,
        anchor=anchor,
        self_anchor=self_anchor,
        **weights,
    )
