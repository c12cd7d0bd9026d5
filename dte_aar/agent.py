"""The Agent: a grown model with its tokenizer, ready to write and to be measured.

Also the one place that knows where a workspace keeps the model's files, so the trainer,
the evaluators and the generators agree on them:

    <workspace>/tokenizer.json
    <workspace>/tokens/{train,heldout}.bin (+ .json index)
    <workspace>/checkpoints/cycle-NNNN.safetensors (+ .json sidecar, .optim.safetensors)

Sampling (:class:`BatchDecoder`, :meth:`Agent.stream_batch`) is KV-cached and batched.
The model has no padding mask, so a batch holds prompts of one token length: prompts are
grouped by length, and a prompt longer than the window is cropped to it, so in practice
long prompts share one batch. Each row draws from its own ``torch.Generator``, so a row's
text depends on its seed, not on which other prompts share its batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.nn import functional as F

from dte_aar.checkpoint import CheckpointError, load_checkpoint
from dte_aar.model import GrowingTransformer, KVCache
from dte_aar.tokenizer import EOT_ID, load_tokenizer, tokenizer_hash
from dte_aar.tokens import PackedTokens

FinishReason = Literal["stop", "length"]


def tokenizer_file(workspace: Path) -> Path:
    return Path(workspace) / "tokenizer.json"


def tokens_file(workspace: Path, split: str) -> Path:
    return Path(workspace) / "tokens" / f"{split}.bin"


def checkpoint_file(workspace: Path, cycle: int) -> Path:
    return Path(workspace) / "checkpoints" / f"cycle-{cycle:04d}.safetensors"


@dataclass(frozen=True)
class AnswerScore:
    """How a model reads ``answer`` after a context: its mean per-token negative
    log-likelihood, and per token whether it was the model's argmax (greedy) choice."""

    nll: float
    hits: tuple[bool, ...]

    @property
    def accuracy(self) -> float:
        return sum(self.hits) / len(self.hits) if self.hits else 0.0


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature`` 0 is greedy; ``top_k`` 0/None and ``top_p`` None/1.0
    are off. ``stop`` strings end a text and are not part of it."""

    max_new_tokens: int = 80
    temperature: float = 0.9
    top_k: int | None = 40
    top_p: float | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int  # tokens sampled, the end-of-text token not counted
    finish_reason: FinishReason = "stop"  # stop: end-of-text or a stop string; length: budget
    prompt_tokens: int = 0  # prompt tokens the model saw (after cropping)


def filter_logits(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> torch.Tensor:
    """Scale by temperature, then keep the top-k and the smallest top-p nucleus (the most
    likely token always survives). Returns logits with the rest at -inf."""
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = F.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
        sorted_logits = sorted_logits.masked_fill(before > top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


class BatchDecoder:
    """KV-cached decoding of same-length prompts; one generator per row, rows droppable.

    When the context reaches ``seq_len``, the cache is rebuilt from the last half window,
    so long generations slide instead of failing (learned positions restart, as they do
    when a prompt is cropped).
    """

    def __init__(
        self,
        model: GrowingTransformer,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        seeds: Sequence[int],
    ) -> None:
        if len({len(p) for p in prompts}) != 1 or not prompts[0]:
            raise ValueError("a batch needs non-empty prompts of one length")
        if len(seeds) != len(prompts):
            raise ValueError("one seed per prompt")
        self.model = model
        self.params = params
        device = next(model.parameters()).device
        self.idx = torch.tensor([list(p) for p in prompts], dtype=torch.long, device=device)
        self.gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.rows = list(range(len(prompts)))  # caller's row numbers still decoding
        self.cache: KVCache | None = None
        self.pending: torch.Tensor | None = None  # the last sampled tokens, not yet cached

    @torch.no_grad()
    def step(self) -> list[int]:
        """Sample one token for every active row (in ``self.rows`` order)."""
        seq_len = self.model.config.seq_len
        if self.cache is None or self.cache.length >= seq_len:
            window = self.idx[:, -(seq_len // 2 if self.cache is not None else seq_len) :]
            self.cache = KVCache(len(self.model.blocks))
            logits = self.model._logits(window, self.cache, last_only=True)
        else:
            logits = self.model._logits(self.pending, self.cache, last_only=True)
        logits = logits[:, -1, :].float()
        p = self.params
        if p.temperature <= 0:
            nxt = logits.argmax(dim=-1)
        else:
            probs = F.softmax(filter_logits(logits, p.temperature, p.top_k, p.top_p), dim=-1)
            nxt = torch.stack(
                [torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(self.gens)]
            )
        self.pending = nxt[:, None]
        self.idx = torch.cat((self.idx, self.pending), dim=1)
        return nxt.tolist()

    def drop(self, finished: set[int]) -> None:
        """Stop decoding the caller's rows in ``finished``: their cache rows are freed."""
        keep = [i for i, row in enumerate(self.rows) if row not in finished]
        if len(keep) == len(self.rows):
            return
        sel = torch.tensor(keep, dtype=torch.long, device=self.idx.device)
        self.rows = [self.rows[i] for i in keep]
        self.gens = [self.gens[i] for i in keep]
        self.idx = self.idx[sel]
        if self.pending is not None:
            self.pending = self.pending[sel]
        if self.cache is not None:
            for layer, (k, v) in enumerate(zip(self.cache.k, self.cache.v, strict=True)):
                if k is not None and v is not None:
                    self.cache.k[layer], self.cache.v[layer] = k[sel], v[sel]


def _overlap(text: str, stop: str) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of ``stop``."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


class _Row:
    """One text being written: its tokens, what was emitted, and why it ended."""

    def __init__(self, tokenizer: Tokenizer, params: SamplingParams, prompt_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.params = params
        self.prompt_tokens = prompt_tokens
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.finish: FinishReason | None = None

    def add(self, token: int) -> str:
        """Take one sampled token; return the text that is now safe to emit."""
        if token == EOT_ID:
            self.finish = "stop"
            return self._flush()
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids)
        stops = self.params.stop
        if stops:
            start = max(0, self.emitted - max(len(s) for s in stops))
            cuts = [i for s in stops if s and (i := self.text.find(s, start)) >= 0]
            if cuts:
                self.text = self.text[: min(cuts)]
                self.finish = "stop"
                return self._flush()
        if len(self.ids) >= self.params.max_new_tokens:
            self.finish = "length"
            return self._flush()
        safe = len(self.text.rstrip("\ufffd"))  # an incomplete UTF-8 sequence may complete
        # A tail that may be the start of a stop string waits for the next token.
        hold = max((_overlap(self.text[:safe], s) for s in stops), default=0)
        return self._emit(max(safe - hold, self.emitted))

    def _flush(self) -> str:
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        delta, self.emitted = self.text[self.emitted : upto], upto
        return delta

    def completion(self) -> Completion:
        assert self.finish is not None
        return Completion(self.text, len(self.ids), self.finish, self.prompt_tokens)


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

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def prompt_ids(self, prompt: str, max_new_tokens: int) -> list[int]:
        """The prompt's tokens, its start cut so the window leaves room for the reply
        (at least half the window stays prompt; longer replies slide the window)."""
        ids = self.encode(prompt) or [EOT_ID]
        seq_len = self.model.config.seq_len
        keep = max(1, seq_len - max_new_tokens, seq_len // 2)
        return ids[-keep:]

    def stream_batch(
        self, prompts: Sequence[str], params: SamplingParams, seeds: Sequence[int]
    ) -> Iterator[tuple[int, str, Completion | None]]:
        """Sample a continuation of every prompt, batched by prompt length.

        Yields ``(row, text delta, None)`` as text becomes final and ``(row, rest,
        completion)`` once a row ends (end-of-text, a stop string, or ``max_new_tokens``).
        A stop string never appears in a delta, even split across tokens.
        """
        if len(seeds) != len(prompts):
            raise ValueError("one seed per prompt")
        ids = [self.prompt_ids(p, params.max_new_tokens) for p in prompts]
        groups: dict[int, list[int]] = {}
        for row, prompt in enumerate(ids):
            groups.setdefault(len(prompt), []).append(row)
        for rows in groups.values():
            decoder = BatchDecoder(
                self.model, [ids[r] for r in rows], params, [seeds[r] for r in rows]
            )
            states = {r: _Row(self.tokenizer, params, len(ids[r])) for r in rows}
            while decoder.rows:
                active = [rows[i] for i in decoder.rows]
                finished: set[int] = set()
                for i, row, token in zip(decoder.rows, active, decoder.step(), strict=True):
                    state = states[row]
                    delta = state.add(token)
                    if state.finish is not None:
                        finished.add(i)
                        yield row, delta, state.completion()
                    elif delta:
                        yield row, delta, None
                decoder.drop(finished)

    def generate_batch(
        self, prompts: Sequence[str], params: SamplingParams, seeds: Sequence[int]
    ) -> list[Completion]:
        """Completions of ``prompts`` in order; see :meth:`stream_batch`."""
        out: list[Completion | None] = [None] * len(prompts)
        for row, _, completion in self.stream_batch(prompts, params, seeds):
            if completion is not None:
                out[row] = completion
        return [c for c in out if c is not None]

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 80,
        temperature: float = 0.9,
        top_k: int | None = 40,
        seed: int = 0,
        top_p: float | None = None,
        stop: Sequence[str] = (),
    ) -> Completion:
        """Sample a continuation of ``prompt``, stopping at end-of-text or a stop string."""
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, tuple(stop))
        return self.generate_batch([prompt], params, [seed])[0]

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
    @torch.no_grad()
    def answer_score(self, context: str, answer: str) -> AnswerScore:
        """Teacher-forced score of ``answer`` right after ``context``: one forward pass.

        The context starts with end-of-text, as every training document does (the packed
        token files end each one with it). In a short window the answer is cut, never the
        context below half the window: an answer read without its question would score the
        same after every question. What the milestone evaluators are built on.
        """
        tok, model = self.tokenizer, self.model
        answer_ids = tok.encode(answer).ids
        if not answer_ids:
            raise ValueError("cannot score an empty answer")
        context_ids = [EOT_ID, *tok.encode(context).ids]
        window = model.config.seq_len
        keep = min(len(context_ids), max(window // 2, window + 1 - len(answer_ids)))
        answer_ids = answer_ids[: window + 1 - keep]
        ids = context_ids[len(context_ids) - keep :] + answer_ids
        n = len(answer_ids)
        x = torch.tensor([ids[:-1]], device=self.device)
        target = torch.tensor(ids[-n:], device=self.device)
        logits, _ = model(x)
        logits = logits[0, -n:].float()
        nll = F.cross_entropy(logits, target).item()
        hits = (logits.argmax(dim=-1) == target).tolist()
        return AnswerScore(nll, tuple(bool(h) for h in hits))

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
