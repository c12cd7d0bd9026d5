"""The corpus every arm of `dte ablate` shares, and the identity init computed from it.

The arena's seed plus ``--import`` files, split by origin with :func:`dte_aar.arena.heldout`
(the workspace's seed and fraction). Imported text is split too, so the held-out loss covers
what the arms train on; origins are taken relative to each imported path's parent, so the
split does not depend on where the files live. One byte-level BPE is trained on the train
split and both splits are packed once. The held-out loss is read from fixed windows, evenly
spaced over the held-out split, so every evaluation of every arm reads the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from dte_aar.arena import (
    CHAT_SUFFIXES,
    CODE_SUFFIXES,
    TEXT_SUFFIXES,
    Arena,
    Example,
    heldout,
    read_examples,
)
from dte_aar.config import Settings
from dte_aar.embeddings import cooccurrence_factors, word2vec_embeddings
from dte_aar.model import ModelConfig
from dte_aar.tokenizer import self_reference_ids, train_tokenizer
from dte_aar.tokens import PackedTokens, encode_samples, split_documents

SUFFIXES = TEXT_SUFFIXES | CODE_SUFFIXES | CHAT_SUFFIXES


class AblateError(Exception):
    """A problem with the inputs, phrased as one line."""


@dataclass
class Corpus:
    tokenizer: Tokenizer
    train: PackedTokens
    windows: torch.Tensor  # (n, seq_len + 1): the held-out evaluation windows
    heldout_tokens: int
    self_ids: list[int]
    counts: dict[str, int]
    problems: list[str]


def read_imports(paths: tuple[Path, ...], speaker: str) -> tuple[list[Example], list[str]]:
    """Examples from files and directories (their text, source and JSONL files), with origins
    relative to each path's parent, so the split does not depend on where they live."""
    examples: list[Example] = []
    problems: list[str] = []
    for root in (p.resolve() for p in paths):
        files = [root]
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        for path in files:
            found, issues = read_examples(path, speaker, relative_to=root.parent)
            examples.extend(found)
            problems.extend(str(issue) for issue in issues)
    return examples, problems


def eval_windows(tokens: np.ndarray, seq_len: int, max_tokens: int) -> torch.Tensor:
    """Evenly spaced windows of ``seq_len + 1`` tokens, at most ``max_tokens`` targets."""
    available = (len(tokens) - 1) // seq_len
    if available < 1:
        raise AblateError(
            f"the held-out split has {len(tokens)} tokens, less than one window of "
            f"{seq_len + 1}: add text with --import or raise heldout_fraction"
        )
    n = max(1, min(available, max_tokens // seq_len))
    starts = np.linspace(0, len(tokens) - seq_len - 1, n).round().astype(np.int64)
    windows = np.stack([np.asarray(tokens[s : s + seq_len + 1]) for s in starts])
    return torch.from_numpy(windows.astype(np.int64))


def prepare_corpus(
    arena: Arena,
    settings: Settings,
    imports: tuple[Path, ...],
    vocab_size: int,
    seq_len: int,
    eval_tokens: int,
    workdir: Path,
) -> Corpus:
    imported, problems = read_imports(imports, arena.identity.name)
    texts: dict[str, list[str]] = {"train": [], "heldout": []}
    for example in [*arena.seed, *imported]:
        held = heldout(example.origin, settings.seed, settings.heldout_fraction)
        texts["heldout" if held else "train"].append(example.text)
    phrases = list(arena.identity.self_reference)
    tok = train_tokenizer(texts["train"], vocab_size, phrases=phrases)
    packed = {}
    for split, items in texts.items():
        packed[split] = PackedTokens(workdir / f"{split}.bin", tok.get_vocab_size())
        packed[split].append(encode_samples(tok, enumerate(items)))
    if len(packed["train"]) <= seq_len:
        raise AblateError(f"the train split has {len(packed['train'])} tokens; need > {seq_len}")
    windows = eval_windows(packed["heldout"].memmap(), seq_len, eval_tokens)
    counts = {
        "seed_examples": len(arena.seed),
        "imported_examples": len(imported),
        "train_examples": len(texts["train"]),
        "heldout_examples": len(texts["heldout"]),
    }
    return Corpus(
        tok,
        packed["train"],
        windows,
        len(packed["heldout"]),
        self_reference_ids(tok, phrases),
        counts,
        problems,
    )


class InitCache:
    """The identity-embedded init (Word2Vec, co-occurrence factors), once per seed."""

    def __init__(self, corpus: Corpus, shape: ModelConfig, settings: Settings) -> None:
        self.sequences = split_documents(corpus.train.memmap())
        self.shape = shape
        self.train = settings.train
        self._cache: dict[tuple[str, int], Any] = {}

    def word2vec(self, seed: int) -> torch.Tensor:
        if ("w2v", seed) not in self._cache:
            vocab, d = self.shape.vocab_size, self.shape.d_model
            emb = word2vec_embeddings(self.sequences, vocab, d, seed=seed, workers=1)
            self._cache["w2v", seed] = emb
        return self._cache["w2v", seed]

    def cooc(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        if ("cooc", seed) not in self._cache:
            t = self.train
            self._cache["cooc", seed] = cooccurrence_factors(
                self.sequences, self.shape.vocab_size, t.cooc_rank, window=t.cooc_window, seed=seed
            )
        return self._cache["cooc", seed]
