"""The growing transformer: a GPT-style decoder that gains one block per bootstrap cycle.

Decoder-only, pre-norm, causal ``scaled_dot_product_attention``, learned positions, untied
head. Two things set it apart from nanoGPT's GPT:

- ``grow()`` appends a block. The default ``identity`` init zeroes the block's two output
  projections, so the residual stream passes through unchanged and the loss does not jump.
- ``set_trainable(n)`` freezes everything below the top ``n`` blocks. The frozen prefix runs
  under ``torch.no_grad()``: no activations are kept for it and backward stops at its top.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn as nn
from torch.nn import functional as F

GrowthInit = Literal["identity", "copy", "random"]


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 2048
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 512
    seq_len: int = 128
    n_layers: int = 1  # blocks the model has now; grow() adds one
    target_layers: int = 6  # depth the bootstrap grows toward (also scales the init)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "d_ff", "seq_len", "n_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be positive")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.target_layers < 1:
            raise ValueError("ModelConfig.target_layers must be positive")


PRESETS: dict[str, ModelConfig] = {
    # Trains in minutes on two CPU cores.
    "tiny": ModelConfig(
        vocab_size=2048, d_model=128, n_heads=4, d_ff=512, seq_len=128, target_layers=6
    ),
    # The seed document's model: GPT-2 small's shape, grown to 24 layers.
    "small": ModelConfig(
        vocab_size=50257, d_model=768, n_heads=12, d_ff=3072, seq_len=1024, target_layers=24
    ),
}


class KVCache:
    """Keys and values of the tokens seen so far, one pair per block (used by ``generate``)."""

    def __init__(self, n_layers: int) -> None:
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers
        self.length = 0  # tokens cached, i.e. the position of the next token

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's keys/values for ``layer``; return all of them."""
        if self.k[layer] is not None:
            k = torch.cat((self.k[layer], k), dim=2)
            v = torch.cat((self.v[layer], v), dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(layer, k, v)
        # A lone query (cached decoding) may see every cached key; SDPA's is_causal mask is
        # aligned top-left and would hide all but the first, so it is only used for T > 1.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm transformer block; ``attn.proj`` and ``mlp.proj`` write to the residual."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


class GrowingTransformer(nn.Module):
    def __init__(self, config: ModelConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.seq_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.n_trainable: int | None = None  # top blocks trainable; None: the whole model
        self._init_weights(self, generator)

    # ----------------------------------------------------------------------- init and growth
    def _init_weights(self, module: nn.Module, generator: torch.Generator | None) -> None:
        """GPT-2 init; residual projections scaled by the *target* depth, so a block's init
        does not depend on when it was grown."""
        proj_std = 0.02 / math.sqrt(2 * self.config.target_layers)
        for name, m in module.named_modules():
            if isinstance(m, nn.Linear):
                std = proj_std if name.endswith("proj") else 0.02
                nn.init.normal_(m.weight, 0.0, std, generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, 0.02, generator=generator)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.no_grad()
    def grow(
        self, init: GrowthInit = "identity", generator: torch.Generator | None = None
    ) -> Block:
        """Append a block on top; the trainable top-n setting is re-applied to the new depth.

        identity: output projections zero, so the model computes exactly the same function;
        copy: a copy of the current top block (stacking); random: a freshly initialised block.
        """
        top = self.blocks[-1]
        if init == "copy":
            block = copy.deepcopy(top)
        elif init in ("identity", "random"):
            block = Block(self.config)
            self._init_weights(block, generator)
            if init == "identity":
                for proj in (block.attn.proj, block.mlp.proj):
                    proj.weight.zero_()
                    proj.bias.zero_()
        else:
            raise ValueError(f"unknown growth init {init!r} (identity, copy or random)")
        ref = top.ln1.weight
        self.blocks.append(block.to(device=ref.device, dtype=ref.dtype))
        self.config = replace(self.config, n_layers=len(self.blocks))
        self.set_trainable(self.n_trainable)
        return block

    # ----------------------------------------------------------------------- freezing
    @property
    def n_frozen_blocks(self) -> int:
        if self.n_trainable is None:
            return 0
        return max(0, len(self.blocks) - self.n_trainable)

    def set_trainable(self, n_trainable_top_blocks: int | None) -> None:
        """Train only the top n blocks plus final norm and head; None trains everything.

        With any n the embeddings are frozen too: they sit below every block.
        """
        n = n_trainable_top_blocks
        if n is not None and n < 0:
            raise ValueError("n_trainable_top_blocks must be >= 0 or None")
        self.n_trainable = n
        self.tok_emb.requires_grad_(n is None)
        self.pos_emb.requires_grad_(n is None)
        for i, block in enumerate(self.blocks):
            block.requires_grad_(i >= self.n_frozen_blocks)
        self.ln_f.requires_grad_(True)
        self.head.requires_grad_(True)

    def frozen_mask(self) -> list[bool]:
        """Per block, bottom first: True where the block is frozen."""
        return [i < self.n_frozen_blocks for i in range(len(self.blocks))]

    # ----------------------------------------------------------------------- forward
    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) and, given targets, the mean cross-entropy (-1 is ignored)."""
        logits = self._logits(idx)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1
        )
        return logits, loss

    def _logits(
        self, idx: torch.Tensor, cache: KVCache | None = None, last_only: bool = False
    ) -> torch.Tensor:
        _, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.seq_len:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds seq_len {self.config.seq_len}"
            )
        if cache is not None and start > 0 and T > 1:
            raise ValueError("a KV cache takes one prompt (prefill), then one token at a time")
        n_frozen = self.n_frozen_blocks
        frozen_prefix = torch.no_grad() if self.n_trainable is not None else nullcontext()
        with frozen_prefix:
            pos = torch.arange(start, start + T, device=idx.device)
            x = self.tok_emb(idx) + self.pos_emb(pos)
            for i in range(n_frozen):
                x = self.blocks[i](x, cache, i)
        for i in range(n_frozen, len(self.blocks)):
            x = self.blocks[i](x, cache, i)
        if cache is not None:
            cache.length += T
        if last_only:
            x = x[:, -1:, :]
        return self.head(self.ln_f(x))

    # ----------------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        stop_token: int | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` after ``idx`` (B, T); returns (B, T + new).

        The context is cropped to the last ``seq_len`` tokens, as without a cache: once the
        cache is full it is rebuilt from the cropped window. ``temperature == 0`` is greedy.
        Stops early when every row has just sampled ``stop_token``.
        """
        was_training = self.training
        self.eval()
        seq_len = self.config.seq_len
        cache: KVCache | None = None
        for _ in range(max_new_tokens):
            if cache is None or cache.length >= seq_len:
                cache = KVCache(len(self.blocks))
                logits = self._logits(idx[:, -seq_len:], cache, last_only=True)
            else:
                logits = self._logits(idx[:, -1:], cache, last_only=True)
            logits = logits[:, -1, :].float()
            if temperature <= 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None and top_k > 0:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
            if stop_token is not None and bool((nxt == stop_token).all()):
                break
        self.train(was_training)
        return idx

    # ----------------------------------------------------------------------- accounting
    def num_params(self, non_embedding: bool = False, trainable_only: bool = False) -> int:
        """Parameter count; ``non_embedding`` leaves out the two embedding tables."""
        params = [p for p in self.parameters() if p.requires_grad or not trainable_only]
        n = sum(p.numel() for p in params)
        if non_embedding:
            for emb in (self.tok_emb, self.pos_emb):
                if emb.weight.requires_grad or not trainable_only:
                    n -= emb.weight.numel()
        return n

    def flops_per_token(self) -> int:
        return config_flops_per_token(self.config)


def config_num_params(cfg: ModelConfig, non_embedding: bool = False) -> int:
    """The parameter count of a model of this shape, without building it."""
    d, f = cfg.d_model, cfg.d_ff
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
    n = cfg.n_layers * block + 2 * d + d * cfg.vocab_size  # blocks, final norm, head
    return n if non_embedding else n + (cfg.vocab_size + cfg.seq_len) * d


def config_flops_per_token(cfg: ModelConfig) -> int:
    """Training FLOPs per token (forward + backward, everything trainable): 6N for the
    matmuls plus the attention scores at full context (PaLM appendix B, as nanoGPT)."""
    n = config_num_params(cfg, non_embedding=True)
    return 6 * n + 12 * cfg.n_layers * cfg.d_model * cfg.seq_len
