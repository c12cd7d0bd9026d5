"""The Agent: a grown model with its tokenizer, ready to write and to be measured.

Also the one place that knows where a workspace keeps the model's files, so the trainer,
the evaluators and the generators agree on them:

    <workspace>/tokenizer.json
    <workspace>/tokens/{train,heldout}.bin (+ .json index)
    <workspace>/checkpoints/cycle-NNNN.safetensors (+ .json sidecar, .optim.safetensors)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.nn import functional as F

from dte_aar.checkpoint import CheckpointError, load_checkpoint
from dte_aar.model import GrowingTransformer
from dte_aar.tokenizer import EOT_ID, load_tokenizer, tokenizer_hash
from dte_aar.tokens import PackedTokens


def tokenizer_file(workspace: Path) -> Path:
    return Path(workspace) / "tokenizer.json"


def tokens_file(workspace: Path, split: str) -> Path:
    return Path(workspace) / "tokens" / f"{split}.bin"


def checkpoint_file(workspace: Path, cycle: int) -> Path:
    return Path(workspace) / "checkpoints" / f"cycle-{cycle:04d}.safetensors"


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int  # tokens sampled, the end-of-text token not counted


@dataclass
class Agent:
    model: GrowingTransformer
    tokenizer: Tokenizer
    meta: dict[str, Any]  # the checkpoint's sidecar

    @classmethod
    def load(
        cls,
        checkpoint_path: Path,
        workspace: Path,
        expected_sha256: str | None = None,
        device: str | torch.device = "cpu",
    ) -> Agent:
        """Load a verified checkpoint and the workspace's tokenizer; they must belong together."""
        model, meta = load_checkpoint(checkpoint_path, expected_sha256, device=device)
        if not tokenizer_file(workspace).exists():
            raise CheckpointError(f"{tokenizer_file(workspace)}: missing; the model needs it")
        tok = load_tokenizer(tokenizer_file(workspace))
        want = meta.get("tokenizer_hash")
        if want is not None and want != tokenizer_hash(tok):
            raise CheckpointError(
                f"{checkpoint_path}: trained with tokenizer {want[:12]}, but "
                f"{tokenizer_file(workspace)} is {tokenizer_hash(tok)[:12]}"
            )
        model.eval()
        return cls(model, tok, meta)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 80,
        temperature: float = 0.9,
        top_k: int | None = 40,
        seed: int = 0,
    ) -> Completion:
        """Sample a continuation of ``prompt``, stopping at end-of-text.

        The prompt's start is cut so prompt and continuation fit in ``seq_len``.
        """
        ids = self.tokenizer.encode(prompt).ids or [EOT_ID]
        ids = ids[-max(1, self.model.config.seq_len - max_new_tokens) :]
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out = self.model.generate(
            idx, max_new_tokens, temperature, top_k, generator=gen, stop_token=EOT_ID
        )
        new = out[0, len(ids) :].tolist()
        if EOT_ID in new:
            new = new[: new.index(EOT_ID)]
        return Completion(self.tokenizer.decode(new), len(new))

    def complete(
        self,
        prompt: str,
        max_new_tokens: int = 80,
        temperature: float = 0.9,
        top_k: int | None = 40,
        seed: int = 0,
    ) -> str:
        return self.generate(prompt, max_new_tokens, temperature, top_k, seed).text

    @torch.no_grad()
    def mean_loss(
        self, tokens: PackedTokens | np.ndarray, batch_size: int = 16, max_tokens: int | None = None
    ) -> float:
        """Mean next-token cross-entropy over non-overlapping ``seq_len`` windows."""
        data = tokens.memmap() if isinstance(tokens, PackedTokens) else np.asarray(tokens)
        if max_tokens is not None:
            data = data[: max_tokens + 1]
        n_targets = len(data) - 1
        if n_targets < 1:
            raise ValueError("need at least two tokens to measure a loss")
        T = self.model.config.seq_len
        n_full = n_targets // T
        was_training = self.model.training
        self.model.eval()
        total = 0.0
        for b in range(0, n_full, batch_size):
            starts = [w * T for w in range(b, min(b + batch_size, n_full))]
            total += self._summed_loss(data, starts, T)
        if n_targets % T:  # the shorter last window
            total += self._summed_loss(data, [n_full * T], n_targets % T)
        self.model.train(was_training)
        return total / n_targets

    def _summed_loss(self, data: np.ndarray, starts: list[int], n: int) -> float:
        x = np.stack([data[s : s + n] for s in starts]).astype(np.int64)
        y = np.stack([data[s + 1 : s + 1 + n] for s in starts]).astype(np.int64)
        logits, _ = self.model(torch.from_numpy(x).to(self.device))
        loss = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)),
            torch.from_numpy(y).to(self.device).view(-1),
            reduction="sum",
        )
        return loss.item()

    def perplexity(self, tokens: PackedTokens | np.ndarray, max_tokens: int | None = None) -> float:
        """exp(mean cross-entropy): how surprised the model is by ``tokens``."""
        return math.exp(self.mean_loss(tokens, max_tokens=max_tokens))
