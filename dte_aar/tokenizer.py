"""Byte-level BPE trained on the arena, so the identity's own words get short token sequences.

Byte-level means every string round-trips: nothing is ever out of vocabulary. The tokenizer
is trained once per workspace and fixed afterwards; checkpoints record its hash so a model is
never paired with a tokenizer it was not trained with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from dte_aar.atomic import atomic_write_text

EOT = "<|endoftext|>"
EOT_ID = 0  # trained as the first special token, so it is always id 0


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE with ``<|endoftext|>`` as id 0. Deterministic for the same input.

    The vocabulary can come out smaller than ``vocab_size`` when the texts run out of merges.
    """
    if vocab_size < 257:
        raise ValueError(f"vocab_size {vocab_size} is below the 256 bytes plus {EOT}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    if tok.token_to_id(EOT) != EOT_ID:  # pragma: no cover - guards a tokenizers change
        raise RuntimeError(f"{EOT} did not get id {EOT_ID}")
    return tok


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    """Write the tokenizer's JSON atomically."""
    atomic_write_text(Path(path), tok.to_str())


def load_tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_str(Path(path).read_text(encoding="utf-8"))


def tokenizer_hash(tok: Tokenizer) -> str:
    """sha256 of the tokenizer's JSON: the same merges and vocab give the same hash."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()
