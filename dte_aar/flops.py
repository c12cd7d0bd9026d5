"""Training FLOPs of one token, counted from the model's shape and what trains.

The convention is nanoGPT's after PaLM appendix B (see
:func:`dte_aar.model.config_flops_per_token`): a matmul with ``n`` weights costs ``2n`` FLOPs
per token forward and ``4n`` backward (gradients of inputs and weights), and attention at full
context costs ``2 * T * width`` forward per layer for q.k plus as much for att.v.

Frozen blocks are not free: under the greedy schedule the frozen prefix still runs forward
(under ``no_grad``) for every token trained, so it costs ``2n``, while nothing below the
lowest trainable block needs a backward pass. Comparing arms by these counts, not by steps,
is what makes an ablation fair. Embedding lookups and layer norms are ignored (as nanoGPT
does); the head, always trainable, costs ``6 * d_model * vocab``.
"""

from __future__ import annotations

from dataclasses import dataclass

from dte_aar.model import ModelConfig

FORWARD = 2  # FLOPs per weight per token, forward
BACKWARD = 4  # FLOPs per weight per token, backward (input and weight gradients)


def block_weights(cfg: ModelConfig) -> int:
    """Matmul weights of one block (qkv, output projection, the two MLP matrices)."""
    d, f = cfg.d_model, cfg.d_ff
    return 3 * d * d + d * d + 2 * d * f


def attention_forward(cfg: ModelConfig) -> int:
    """Forward FLOPs per token of one block's attention scores and mixing at full context:
    q.k and att.v, each ``2 * T * width`` (the prior columns widen q and k)."""
    width = cfg.d_model + cfg.n_heads * cfg.prior_columns
    return 2 * 2 * cfg.seq_len * width


@dataclass(frozen=True)
class StepShape:
    """What one training step runs: the depth and how many of the top blocks train
    (None: all of them, embeddings included)."""

    layers: int
    trainable_top: int | None = None

    @property
    def frozen(self) -> int:
        if self.trainable_top is None:
            return 0
        return max(0, self.layers - self.trainable_top)


def flops_per_token(cfg: ModelConfig, shape: StepShape) -> int:
    """Training FLOPs per token: trainable blocks forward + backward, frozen blocks forward
    only, the head forward + backward."""
    per_block_fwd = FORWARD * block_weights(cfg) + attention_forward(cfg)
    per_block_train = 3 * per_block_fwd  # backward is twice the forward, attention included
    trainable = shape.layers - shape.frozen
    head = (FORWARD + BACKWARD) * cfg.d_model * cfg.vocab_size
    return trainable * per_block_train + shape.frozen * per_block_fwd + head


def training_flops(cfg: ModelConfig, shape: StepShape, tokens: int) -> int:
    """FLOPs of training ``tokens`` tokens at ``shape``."""
    return flops_per_token(cfg, shape) * tokens


def inference_flops_per_token(cfg: ModelConfig, layers: int) -> int:
    """Forward-only FLOPs per token (sampling, evaluation) at full context."""
    per_block_fwd = FORWARD * block_weights(cfg) + attention_forward(cfg)
    return layers * per_block_fwd + FORWARD * cfg.d_model * cfg.vocab_size
