"""Tokenizer and packed token files: deterministic BPE, crash-safe appends, random batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dte_aar.tokenizer import (
    EOT,
    EOT_ID,
    load_tokenizer,
    save_tokenizer,
    tokenizer_hash,
    train_tokenizer,
)
from dte_aar.tokens import PackedTokens, PackedTokensError

TEXTS = [
    f"User: what do you remember of branch {i}?\nDeep Tree Echo: I remember the echo of "
    f"root {i % 7}, deep in the tree of memory."
    for i in range(40)
]


def test_tokenizer_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    a = train_tokenizer(TEXTS, 320)
    b = train_tokenizer(iter(TEXTS), 320)
    assert tokenizer_hash(a) == tokenizer_hash(b)
    assert a.token_to_id(EOT) == EOT_ID == 0
    assert 257 < a.get_vocab_size() <= 320
    assert tokenizer_hash(train_tokenizer(TEXTS[:20], 320)) != tokenizer_hash(a)

    text = "Deep Tree Echo: ünïcode 🌳 and\ttabs survive byte-level BPE"
    assert a.decode(a.encode(text).ids) == text
    # Trained merges make the arena's words short.
    assert len(a.encode("Deep Tree Echo").ids) < len("Deep Tree Echo")

    path = tmp_path / "sub" / "tokenizer.json"
    save_tokenizer(a, path)
    assert tokenizer_hash(load_tokenizer(path)) == tokenizer_hash(a)
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temp left
    with pytest.raises(ValueError):
        train_tokenizer(TEXTS, 100)


def test_append_skips_known_ids_and_adds_end_of_text(tmp_path: Path) -> None:
    packed = PackedTokens(tmp_path / "train.bin", vocab_size=300)
    assert packed.append([(1, [5, 6, 7]), (2, [8])]) == 6
    assert packed.append([(2, [9, 9]), (3, [10]), (3, [11])]) == 2  # 2 known, 3 once
    assert packed.memmap().tolist() == [5, 6, 7, 0, 8, 0, 10, 0]
    assert packed.sample_ids == [1, 2, 3] and 3 in packed and 4 not in packed
    reopened = PackedTokens(tmp_path / "train.bin")
    assert len(reopened) == 8 and reopened.sample_ids == [1, 2, 3]
    assert reopened.dtype == np.uint16
    assert (tmp_path / "train.bin").stat().st_size == 16
    index = json.loads((tmp_path / "train.json").read_text())
    assert index == {"dtype": "uint16", "length": 8, "sample_ids": [1, 2, 3]}
    assert reopened.append([]) == 0


def test_large_vocab_uses_uint32(tmp_path: Path) -> None:
    packed = PackedTokens(tmp_path / "big.bin", vocab_size=100_000)
    packed.append([(1, [70_000, 99_999])])
    assert packed.dtype == np.uint32
    assert PackedTokens(tmp_path / "big.bin").memmap().tolist() == [70_000, 99_999, 0]
    small = PackedTokens(tmp_path / "small.bin", vocab_size=300)
    with pytest.raises(ValueError, match="out of range"):
        small.append([(1, [1, 70_000])])
    assert len(small) == 0 and 1 not in small


def test_crash_between_tokens_and_index_is_truncated_on_open(tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    packed = PackedTokens(path, vocab_size=300)
    packed.append([(1, [1, 2, 3])])
    # Simulate a crash after the tokens were fsynced but before the index was replaced.
    with open(path, "ab") as f:
        f.write(np.asarray([7, 7, 7, 0, 9], dtype=np.uint16).tobytes() + b"\x01")
    recovered = PackedTokens(path)
    assert path.stat().st_size == 4 * 2
    assert recovered.memmap().tolist() == [1, 2, 3, 0]
    # The lost sample is appended again, cleanly, by the next cycle.
    recovered.append([(1, [1, 2, 3]), (2, [7, 7, 7])])
    assert PackedTokens(path).memmap().tolist() == [1, 2, 3, 0, 7, 7, 7, 0]


def test_crash_before_the_first_index_leaves_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    path.write_bytes(b"\x05\x00\x06\x00")
    packed = PackedTokens(path, vocab_size=300)
    assert len(packed) == 0 and path.stat().st_size == 0
    assert packed.memmap().size == 0


def test_a_file_shorter_than_its_index_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "train.bin"
    PackedTokens(path, vocab_size=300).append([(1, [1, 2, 3])])
    path.write_bytes(path.read_bytes()[:4])
    with pytest.raises(PackedTokensError, match="index promises"):
        PackedTokens(path)


def test_get_batch_windows_are_shifted_and_seeded(tmp_path: Path) -> None:
    packed = PackedTokens(tmp_path / "train.bin", vocab_size=300)
    packed.append([(i, list(range(i * 10 + 1, i * 10 + 10))) for i in range(20)])
    data = packed.memmap()
    assert not data.flags.writeable
    x, y = packed.get_batch(np.random.default_rng(0), 4, 8)
    assert x.shape == y.shape == (4, 8) and str(x.dtype) == "torch.int64"
    assert (x[:, 1:] == y[:, :-1]).all()
    for row in x:  # every row is a real window of the file
        s = [i for i in range(len(data) - 8) if data[i : i + 8].tolist() == row.tolist()]
        assert s
    x2, _ = packed.get_batch(np.random.default_rng(0), 4, 8)
    x3, _ = packed.get_batch(np.random.default_rng(1), 4, 8)
    assert (x == x2).all() and not (x == x3).all()
    with pytest.raises(ValueError, match="need more than seq_len"):
        packed.get_batch(np.random.default_rng(0), 1, len(packed))
