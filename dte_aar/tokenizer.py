"""Byte-level BPE trained on the arena, so the identity's own words get short token sequences.

Byte-level means every string round-trips: nothing is ever out of vocabulary. The tokenizer
is trained once per workspace and fixed afterwards; checkpoints record its hash so a model is
never paired with a tokenizer it was not trained with.

Identity phrases ("Deep Tree Echo", "reservoir") become single tokens, with and without a
leading space. The merges are learned as usual (so " Tree" and " Echo" still exist for "Deep
Tree Echoes"); afterwards a ``Split`` pre-tokenizer (GPT-2's regex with the phrases as first
alternatives, guarded by word-boundary look-arounds) cuts a phrase out as one piece only where
it stands as a whole word, the phrase is a plain vocabulary entry, and ``ignore_merges`` maps a
piece that is already in the vocabulary straight to its id. Added tokens were the other option
and fail here: ``single_word`` refuses " Deep Tree Echo" after a word ("I am Deep Tree Echo"
matched neither form) and ``lstrip`` drops the space on decode. Decoding stays exact.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from dte_aar.atomic import atomic_write_text

EOT = "<|endoftext|>"
EOT_ID = 0  # trained as the first special token, so it is always id 0

# The regex ByteLevel(use_regex=True) applies; phrases go in front of it.
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_WORD = r"[\p{L}\p{M}\p{N}_]"
_BYTES = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, phrases: Sequence[str] = ()
) -> Tokenizer:
    """Train a byte-level BPE with ``<|endoftext|>`` as id 0. Deterministic for the same input.

    Every ``phrases`` entry longer than one character gets a token of its own, with and without
    a leading space; they share ``vocab_size`` with the merges (the last merges give way). The
    vocabulary can come out smaller than ``vocab_size`` when the texts run out of merges.
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
    words = sorted({p.strip() for p in phrases if len(p.strip()) > 1})
    return _with_phrases(tok, words, vocab_size) if words else tok


def _byte_level(text: str) -> str:
    """``text`` in the byte-level alphabet the vocabulary is written in (" " -> "Ġ")."""
    return "".join(piece for piece, _ in _BYTES.pre_tokenize_str(text))


def phrase_split_pattern(phrases: Sequence[str]) -> str:
    """GPT-2's split regex with each phrase (optionally after one space) tried first.

    A phrase edge that is a word character must sit on a word boundary, so this never cuts
    "my" out of "myth" nor "Deep Tree Echo" out of "Deep Tree Echoes": such words are left to
    the ordinary merges. Longest phrases come first because the regex takes the first
    alternative that matches, not the longest.
    """
    alternatives = []
    for phrase in sorted(phrases, key=lambda p: (-len(p), p)):
        body = "".join(
            f"\\{c}" if c.isascii() and not c.isalnum() and c != " " else c for c in phrase
        )
        head = f"(?<!{_WORD})" if _is_word_char(phrase[0]) else ""
        tail = f"(?!{_WORD})" if _is_word_char(phrase[-1]) else ""
        alternatives.append(f"{head}{body}{tail}")
    return f" ?(?:{'|'.join(alternatives)})|{GPT2_SPLIT}"


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _with_phrases(tok: Tokenizer, phrases: list[str], vocab_size: int) -> Tokenizer:
    """Add the phrase tokens to a trained BPE, dropping its last merges to keep ``vocab_size``.

    Dropping the last k merges is the same as training k tokens fewer (BPE is greedy), so the
    result is exactly a smaller BPE plus the phrases. ``ignore_merges`` also sends any other
    whole piece that is in the vocabulary straight to its id, which can only shorten it.
    """
    spec = json.loads(tok.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    merges: list = spec["model"]["merges"]
    variants = [_byte_level(v) for p in phrases for v in (p, " " + p)]
    drop = 0
    while True:
        kept = len(vocab) - drop
        present = {t for t, i in vocab.items() if i < kept}
        missing = [v for v in dict.fromkeys(variants) if v not in present]
        if kept + len(missing) <= vocab_size:
            break
        drop = len(vocab) + len(missing) - vocab_size
        if drop > len(merges):
            raise ValueError(f"vocab_size {vocab_size} cannot hold 256 bytes, {EOT} and phrases")
    if drop:
        gone = {"".join(m) if isinstance(m, list) else m.replace(" ", "") for m in merges[-drop:]}
        if any(vocab[t] < kept for t in gone):  # pragma: no cover - guards a tokenizers change
            raise RuntimeError("the BPE trainer no longer numbers merged tokens in merge order")
        merges[-drop:] = []
    spec["model"]["vocab"] = {t: i for t, i in vocab.items() if i < kept}
    spec["model"]["vocab"].update({t: kept + n for n, t in enumerate(missing)})
    spec["model"]["ignore_merges"] = True
    out = Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
    out.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(phrase_split_pattern(phrases)), behavior="isolated"),
            _BYTES,
        ]
    )
    for phrase in phrases:
        for text in (phrase, " " + phrase):
            if len(out.encode(text).ids) != 1:  # pragma: no cover - guards a tokenizers change
                raise RuntimeError(f"phrase {text!r} did not become a single token")
    return out


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    """Write the tokenizer's JSON atomically."""
    atomic_write_text(Path(path), tok.to_str())


def load_tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_str(Path(path).read_text(encoding="utf-8"))


def tokenizer_hash(tok: Tokenizer) -> str:
    """sha256 of the tokenizer's JSON: the same merges and vocab give the same hash."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()


def self_reference_ids(tok: Tokenizer, phrases: Sequence[str]) -> list[int]:
    """Sorted ids of the tokens that are a self-reference phrase once whitespace is stripped.

    Case-sensitive, so "I" and " I" count but "i" does not; these are the tokens the loss
    weights and the key bias boost.
    """
    wanted = set(phrases)
    ids = range(tok.get_vocab_size())
    texts = tok.decode_batch([[i] for i in ids], skip_special_tokens=True)
    return sorted(i for i, text in zip(ids, texts, strict=True) if text.strip() in wanted)
