"""The growing transformer: a GPT-style decoder that gains one block per bootstrap cycle.

Decoder-only, pre-norm, causal ``scaled_dot_product_attention``, learned positions, untied
head. What sets it apart from nanoGPT's GPT:

- ``grow()`` appends blocks. The default ``identity`` init zeroes a block's two output
  projections, so the residual stream passes through unchanged and the loss does not jump.
- ``set_trainable(n)`` freezes everything below the top ``n`` blocks. The frozen prefix runs
  under ``torch.no_grad()``: no activations are kept for it and backward stops at its top.
  ``frozen_prefix()`` computes it once so a caller can reuse it (``forward(prefix_hidden=)``).
- Two optional attention priors, both folded into the one SDPA call as extra q/k columns
  (no T x T bias tensor, so the fused kernels stay usable):
  a co-occurrence prior ``alpha * U[query token] . V[key token]`` (``cooc_rank`` > 0) and a
  learnable per-token key bias ``b[key token]`` (``key_bias``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn as nn
from torch.nn import functional as F

GrowthInit = Literal["identity", "copy", "random"]

COOC_ALPHA_INIT = 0.1
"""Initial strength of the co-occurrence prior. U.V reconstructs log(1 + count), of order 1,
while q.k/sqrt(d) starts near 0 (0.02-std weights), so 0.1 lets the prior shape the first
attention patterns without saturating the softmax; alpha is learnable and can grow or vanish."""


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 2048
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 512
    seq_len: int = 128
    n_layers: int = 1  # blocks the model has now; grow() adds one
    target_layers: int = 6  # depth the bootstrap grows toward (also scales the init)
    cooc_rank: int = 0  # rank of the co-occurrence attention prior; 0: off
    key_bias: bool = False  # learnable per-token key bias (identity-aware attention)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_heads", "d_ff", "seq_len", "n_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be positive")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.target_layers < 1:
            raise ValueError("ModelConfig.target_layers must be positive")
        if self.cooc_rank < 0:
            raise ValueError("ModelConfig.cooc_rank must be >= 0")

    @property
    def prior_columns(self) -> int:
        """Extra q/k columns per head for the priors: rank + 1 for the key bias, rounded up
        to a multiple of 8 (fused CUDA kernels want head dims in multiples of 8); 0 if off."""
        used = self.cooc_rank + int(self.key_bias)
        return -(-used // 8) * 8


PRESETS: dict[str, ModelConfig] = {
    # Trains in minutes on two CPU cores.
    "tiny": ModelConfig(
        vocab_size=2048, d_model=128, n_heads=4, d_ff=512, seq_len=128, target_layers=6
    ),
    # The seed document's model: GPT-2 small's shape, grown to 24 layers (~0.25B untied).
    "small": ModelConfig(
        vocab_size=50257, d_model=768, n_heads=12, d_ff=3072, seq_len=1024, target_layers=24
    ),
    # GPT-2 medium's shape: 24 layers; ~0.41B with the untied head (GPT-2's tied count is 0.35B).
    "medium": ModelConfig(
        vocab_size=50257, d_model=1024, n_heads=16, d_ff=4096, seq_len=1024, target_layers=24
    ),
    # ~0.97B at 24 layers (so the stage schedule is the same as small's); 128-wide heads.
    "large": ModelConfig(
        vocab_size=50257, d_model=1664, n_heads=13, d_ff=6656, seq_len=1024, target_layers=24
    ),
}


class KVCache:
    """Keys and values of the tokens seen so far, one pair per block (used by ``generate``).

    With the attention priors on, the keys cached are the extended ones (prior columns
    included), so a decoding step needs only its own token id."""

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
        self,
        x: torch.Tensor,
        prior: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """``prior`` (B, T, 3, E): extra columns for q, k and v, shared by every head. Appended
        to each head's q and k, SDPA computes q.k/sqrt(d_head) plus their dot product in its own
        kernel. The value side is zeros: SDPA accepts a narrower value, but CPU and CUDA then
        fall back to the dense math kernel; equal widths keep the fused ones (sliced off below).
        """
        B, T, C = x.shape
        H, D = self.n_heads, C // self.n_heads
        qkv = self.qkv(x).view(B, T, 3, H, D)
        if prior is not None:
            qkv = torch.cat((qkv, prior.to(qkv.dtype).unsqueeze(3).expand(B, T, 3, H, -1)), -1)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # (B, H, T, D [+ E]) views
        if cache is not None:
            k, v = cache.update(layer, k, v)
        # A lone query (cached decoding) may see every cached key; SDPA's is_causal mask is
        # aligned top-left and would hide all but the first, so it is only used for T > 1.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, scale=1 / math.sqrt(D))
        return self.proj(y[..., :D].transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm transformer block; ``attn.proj`` and ``mlp.proj`` write to the residual.

    With the priors on it also owns ``cooc_alpha`` (scalar strength of the shared
    co-occurrence factors) and ``key_bias`` (one learnable logit offset per key token)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.cooc_rank = cfg.cooc_rank
        if cfg.cooc_rank:
            self.cooc_alpha = nn.Parameter(torch.full((), COOC_ALPHA_INIT))
        if cfg.key_bias:
            self.key_bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def prior(self, idx: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor | None:
        """This block's prior columns (B, T, 3, E), from the model's ``_prior_base``: the
        query side's first ``cooc_rank`` columns scaled by alpha, the key bias b[idx] put in
        the key side's next column (facing a constant on the query side)."""
        if base is None:
            return None
        r, E = self.cooc_rank, base.size(-1)
        if r:
            scale = torch.ones(3, E, dtype=base.dtype, device=base.device)
            scale[0, :r] = self.cooc_alpha
            base = base * scale
        if hasattr(self, "key_bias"):
            bias = self.key_bias[idx].to(base.dtype)[..., None, None]  # (B, T, 1, 1)
            base = base + F.pad(bias, (r, E - r - 1, 1, 1))  # at [.., 1, r]: key side
        return base

    def forward(
        self,
        x: torch.Tensor,
        idx: torch.Tensor,
        prior_base: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), self.prior(idx, prior_base), cache, layer)
        return x + self.mlp(self.ln2(x))


class GrowingTransformer(nn.Module):
    cooc_u: torch.Tensor
    cooc_v: torch.Tensor
    key_bias_init: torch.Tensor

    def __init__(self, config: ModelConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.seq_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.cooc_rank:
            # Fixed co-occurrence factors (set_cooc_factors); buffers, so checkpoints carry them.
            shape = (config.vocab_size, config.cooc_rank)
            self.register_buffer("cooc_u", torch.zeros(shape))
            self.register_buffer("cooc_v", torch.zeros(shape))
        if config.key_bias:
            # What init_key_bias set, so blocks grown later start from the same bias.
            self.register_buffer("key_bias_init", torch.zeros(config.vocab_size))
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
    def set_cooc_factors(self, u: torch.Tensor, v: torch.Tensor) -> None:
        """Install the co-occurrence factors U, V (vocab, r): the prior is U[i].V[j]. ``r`` may
        be below ``cooc_rank`` (a small vocabulary has fewer factors); the rest stay zero."""
        if not self.config.cooc_rank:
            raise ValueError("this model has no co-occurrence prior (cooc_rank is 0)")
        V, rank = self.cooc_u.shape
        for buf, new in ((self.cooc_u, u), (self.cooc_v, v)):
            if new.dim() != 2 or new.size(0) != V or new.size(1) > rank:
                raise ValueError(f"cooc factors must be ({V}, <= {rank}), got {tuple(new.shape)}")
            buf.zero_()
            buf[:, : new.size(1)] = new

    @torch.no_grad()
    def init_key_bias(self, token_ids: Sequence[int], value: float) -> None:
        """Set the key bias of ``token_ids`` to ``value`` in every block, and in blocks grown
        later (identity/random growth starts from ``key_bias_init``)."""
        if not self.config.key_bias:
            raise ValueError("this model has no key bias (ModelConfig.key_bias is off)")
        ids = torch.as_tensor(list(token_ids), dtype=torch.long, device=self.key_bias_init.device)
        self.key_bias_init[ids] = value
        for block in self.blocks:
            block.key_bias[ids] = value

    @torch.no_grad()
    def grow(
        self, init: GrowthInit = "identity", generator: torch.Generator | None = None, n: int = 1
    ) -> Block:
        """Append ``n`` blocks on top; the trainable top-n setting is re-applied to the new
        depth. Returns the new top block.

        identity: output projections zero, so the model computes exactly the same function;
        copy: a copy of the current top block (stacking, its alpha and key bias included);
        random: a freshly initialised block. identity and random blocks start with alpha at
        its init and the key bias from ``key_bias_init``.
        """
        if init not in ("identity", "copy", "random"):
            raise ValueError(f"unknown growth init {init!r} (identity, copy or random)")
        if n < 1:
            raise ValueError("grow() needs n >= 1")
        ref = self.blocks[-1].ln1.weight
        for _ in range(n):
            if init == "copy":
                block = copy.deepcopy(self.blocks[-1])
            else:
                block = Block(self.config)
                self._init_weights(block, generator)
                if init == "identity":
                    for proj in (block.attn.proj, block.mlp.proj):
                        proj.weight.zero_()
                        proj.bias.zero_()
                if self.config.key_bias:
                    block.key_bias.copy_(self.key_bias_init)
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
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        prefix_hidden: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> (
        tuple[torch.Tensor, torch.Tensor | None]
        | tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]
    ):
        """Logits (B, T, vocab) and, given targets, the mean cross-entropy (-1 is ignored).

        ``prefix_hidden``: the output of ``frozen_prefix(idx)``; the frozen blocks are then
        skipped (``idx`` is still needed, for the priors). ``return_hidden`` adds the final
        norm's output (B, T, d_model), for losses on representations.
        """
        hidden = self._hidden(idx, prefix_hidden=prefix_hidden)
        logits = self.head(hidden)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1
            )
        return (logits, loss, hidden) if return_hidden else (logits, loss)

    @torch.no_grad()
    def frozen_prefix(self, idx: torch.Tensor) -> torch.Tensor:
        """Embeddings and frozen blocks, without autograd: the input of the first trainable
        block. While the freezing is unchanged it is a fixed function of ``idx``, so a trainer
        can compute it once per batch and reuse it (``forward(idx, prefix_hidden=...)``)."""
        if self.n_trainable is None:
            raise ValueError("nothing is frozen (set_trainable(None)): no prefix to cache")
        x = self._embed(idx, 0)
        base = self._prior_base(idx)
        for i in range(self.n_frozen_blocks):
            x = self.blocks[i](x, idx, base)
        return x

    def _embed(self, idx: torch.Tensor, start: int) -> torch.Tensor:
        T = idx.size(1)
        if start + T > self.config.seq_len:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds seq_len {self.config.seq_len}"
            )
        pos = torch.arange(start, start + T, device=idx.device)
        return self.tok_emb(idx) + self.pos_emb(pos)

    def _prior_base(self, idx: torch.Tensor) -> torch.Tensor | None:
        """What every block's prior columns share, built once per forward: (B, T, 3, E) with
        the query side [U[idx] * sqrt(d_head), sqrt(d_head) if key_bias, zero padding], the key
        side [V[idx], 0, zeros] and the value side zeros. SDPA scales q.k by 1/sqrt(d_head),
        so the dot product of the two sides adds U_i.V_j (times alpha, see Block.prior) + b_j.
        """
        cfg = self.config
        if not cfg.prior_columns:
            return None
        B, T = idx.shape
        r = cfg.cooc_rank
        base = torch.zeros(B, T, 3, cfg.prior_columns, device=idx.device)
        scale = math.sqrt(cfg.d_model // cfg.n_heads)
        if r:
            base[:, :, 0, :r] = self.cooc_u[idx] * scale
            base[:, :, 1, :r] = self.cooc_v[idx]
        if cfg.key_bias:
            base[:, :, 0, r] = scale
        return base

    def _hidden(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        prefix_hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final norm's output; the frozen prefix under no_grad (or taken as given)."""
        T = idx.size(1)
        start = cache.length if cache is not None else 0
        if cache is not None and start > 0 and T > 1:
            raise ValueError("a KV cache takes one prompt (prefill), then one token at a time")
        n_frozen = self.n_frozen_blocks
        base = self._prior_base(idx)
        if prefix_hidden is not None:
            if self.n_trainable is None or cache is not None:
                raise ValueError("prefix_hidden needs a frozen prefix and no KV cache")
            if prefix_hidden.shape != (*idx.shape, self.config.d_model):
                raise ValueError(f"prefix_hidden {tuple(prefix_hidden.shape)} does not fit idx")
            x = prefix_hidden
        else:
            frozen = torch.no_grad() if self.n_trainable is not None else nullcontext()
            with frozen:
                x = self._embed(idx, start)
                for i in range(n_frozen):
                    x = self.blocks[i](x, idx, base, cache, i)
        for i in range(n_frozen, len(self.blocks)):
            x = self.blocks[i](x, idx, base, cache, i)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)

    def _logits(
        self, idx: torch.Tensor, cache: KVCache | None = None, last_only: bool = False
    ) -> torch.Tensor:
        hidden = self._hidden(idx, cache)
        return self.head(hidden[:, -1:, :] if last_only else hidden)

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
        """Parameter count; ``non_embedding`` leaves out the lookup tables (token and position
        embeddings, per-block key biases): they cost no matmul FLOPs."""
        n = 0
        for name, p in self.named_parameters():
            if trainable_only and not p.requires_grad:
                continue
            if non_embedding and name.endswith(("tok_emb.weight", "pos_emb.weight", "key_bias")):
                continue
            n += p.numel()
        return n

    def flops_per_token(self) -> int:
        return config_flops_per_token(self.config)


def _depth(cfg: ModelConfig, n_layers: int | Literal["target"] | None) -> int:
    if n_layers is None:
        return cfg.n_layers
    return cfg.target_layers if n_layers == "target" else n_layers


def config_num_params(
    cfg: ModelConfig,
    non_embedding: bool = False,
    n_layers: int | Literal["target"] | None = None,
) -> int:
    """The parameter count of a model of this shape, without building it: at its current
    depth, at ``n_layers`` blocks, or at ``n_layers="target"`` (its ``target_layers``)."""
    d, f, V = cfg.d_model, cfg.d_ff, cfg.vocab_size
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
    block += int(cfg.cooc_rank > 0)  # cooc_alpha
    lookup = V * int(cfg.key_bias)  # each block's key bias
    L = _depth(cfg, n_layers)
    n = L * block + 2 * d + d * V  # blocks, final norm, head
    return n if non_embedding else n + L * lookup + (V + cfg.seq_len) * d


def config_flops_per_token(
    cfg: ModelConfig, n_layers: int | Literal["target"] | None = None
) -> int:
    """Training FLOPs per token (forward + backward, everything trainable), as nanoGPT after
    PaLM appendix B: 6N for the matmuls (N without the lookup tables) plus the attention at
    full context, 6 * L * T * (2 * d_model) for q.k and att.v, whose head dim grows by the
    prior columns (values are zero-padded to match, see CausalSelfAttention)."""
    L = _depth(cfg, n_layers)
    n = config_num_params(cfg, non_embedding=True, n_layers=L)
    width = cfg.d_model + cfg.n_heads * cfg.prior_columns
    return 6 * n + 12 * L * width * cfg.seq_len
