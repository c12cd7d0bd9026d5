"""The reference both model benchmarks measure against: transformers' GPT-2 at our shape.

Dropout is off because ours has none, so both models do the same work; SDPA attention, as
ours uses; everything else GPT-2's defaults.
"""

from __future__ import annotations

from typing import Any

from dte_aar.model import ModelConfig


def gpt2_like(cfg: ModelConfig, special_token_id: int | None = None) -> Any:
    """A freshly initialised ``GPT2LMHeadModel`` with ``cfg``'s vocabulary, width, depth,
    heads, MLP width and context; bos/eos are ``special_token_id``."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    config = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.seq_len,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.d_ff,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=special_token_id,
        eos_token_id=special_token_id,
        attn_implementation="sdpa",
    )
    return GPT2LMHeadModel(config)
