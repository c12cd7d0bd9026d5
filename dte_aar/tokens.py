"""Packed token files: the corpus as one flat, memory-mapped array of token ids per split.

``<name>.bin`` holds uint16 ids (uint32 past 65535), each sample followed by the end-of-text
id; ``<name>.json`` records the dtype, how many tokens are valid and which sample ids are in.
Appends write and fsync the tokens first, then replace the index atomically, so a crash in
between leaves extra bytes past the index's length, which the next open cuts off.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from dte_aar.atomic import atomic_write_text
from dte_aar.tokenizer import EOT_ID

if TYPE_CHECKING:
    from tokenizers import Tokenizer


class PackedTokensError(Exception):
    """A packed token file that cannot be trusted (shorter than its index says)."""


class PackedTokens:
    def __init__(self, path: Path, vocab_size: int | None = None, eot_id: int = EOT_ID) -> None:
        """Open (or prepare) ``path``; ``vocab_size`` picks the dtype of a new file."""
        self.path = Path(path)
        self.index_path = self.path.with_suffix(".json")
        self.eot_id = eot_id
        self._mm: np.memmap | None = None
        if self.index_path.exists():
            index = json.loads(self.index_path.read_text(encoding="utf-8"))
            self.dtype = np.dtype(index["dtype"])
            self.length = int(index["length"])
            self._ids: list[int] = [int(i) for i in index["sample_ids"]]
        else:
            big = vocab_size is not None and vocab_size > 65536
            self.dtype = np.dtype(np.uint32 if big else np.uint16)
            self.length = 0
            self._ids = []
        if vocab_size is not None and vocab_size - 1 > np.iinfo(self.dtype).max:
            raise PackedTokensError(f"{self.path}: {self.dtype} cannot hold vocab {vocab_size}")
        self._id_set = set(self._ids)
        self._recover()

    def _recover(self) -> None:
        """Cut tokens written after the last index update (a crash between the two writes)."""
        want = self.length * self.dtype.itemsize
        have = self.path.stat().st_size if self.path.exists() else 0
        if have < want:
            raise PackedTokensError(
                f"{self.path}: has {have} bytes but its index promises {want}; rebuild it"
            )
        if have > want:
            with open(self.path, "r+b") as f:
                f.truncate(want)
                f.flush()
                os.fsync(f.fileno())

    # ----------------------------------------------------------------------- reading
    def __len__(self) -> int:
        return self.length

    def __contains__(self, sample_id: int) -> bool:
        return sample_id in self._id_set

    @property
    def sample_ids(self) -> list[int]:
        return list(self._ids)

    def memmap(self) -> np.ndarray:
        """The valid tokens as a read-only memory map (an empty array before any append)."""
        if self.length == 0:
            return np.empty(0, dtype=self.dtype)
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.length,))
        return self._mm

    def get_batch(
        self, rng: np.random.Generator, batch_size: int, seq_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` random windows: inputs x and next-token targets y, (B, T) int64."""
        data = self.memmap()
        if self.length < seq_len + 1:
            raise ValueError(f"{self.path}: {self.length} tokens, need more than seq_len {seq_len}")
        starts = rng.integers(0, self.length - seq_len, size=batch_size)
        x = np.stack([data[i : i + seq_len] for i in starts]).astype(np.int64)
        y = np.stack([data[i + 1 : i + 1 + seq_len] for i in starts]).astype(np.int64)
        return torch.from_numpy(x), torch.from_numpy(y)

    # ----------------------------------------------------------------------- appending
    def append(self, samples: Iterable[tuple[int, list[int]]]) -> int:
        """Append samples whose id is not in yet, each followed by end-of-text.

        Returns the number of tokens appended.
        """
        new_ids: list[int] = []
        seen: set[int] = set()
        chunks: list[np.ndarray] = []
        limit = np.iinfo(self.dtype).max
        for sample_id, ids in samples:
            if sample_id in self._id_set or sample_id in seen:
                continue
            arr = np.asarray([*ids, self.eot_id], dtype=np.int64)
            if arr.size and (arr.min() < 0 or arr.max() > limit):
                raise ValueError(f"sample {sample_id}: token id out of range for {self.dtype}")
            chunks.append(arr.astype(self.dtype))
            new_ids.append(sample_id)
            seen.add(sample_id)
        if not chunks:
            return 0
        tokens = np.concatenate(chunks)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Write at the index's end, not the file's: bytes a failed append left are overwritten.
        with open(self.path, "r+b" if self.path.exists() else "wb") as f:
            f.seek(self.length * self.dtype.itemsize)
            f.truncate()
            f.write(tokens.tobytes())
            f.flush()
            os.fsync(f.fileno())
        self.length += int(tokens.size)
        self._ids.extend(new_ids)
        self._id_set.update(new_ids)
        self._mm = None
        index = {"dtype": self.dtype.name, "length": self.length, "sample_ids": self._ids}
        atomic_write_text(self.index_path, json.dumps(index))
        return int(tokens.size)


def split_documents(tokens: np.ndarray, eot_id: int = EOT_ID) -> list[np.ndarray]:
    """A packed token array split back into its documents (each ends at end-of-text)."""
    ends = np.flatnonzero(tokens == eot_id)
    return [s for s in np.split(np.asarray(tokens), ends + 1) if len(s)]


def encode_samples(
    tok: Tokenizer, samples: Iterable[tuple[int, str]], batch: int = 512
) -> Iterator[tuple[int, list[int]]]:
    """(sample_id, token ids) pairs, encoded a batch at a time (tokenizers runs in parallel)."""
    samples = iter(samples)
    while chunk := list(islice(samples, batch)):
        encodings = tok.encode_batch([text for _, text in chunk])
        for (sample_id, _), enc in zip(chunk, encodings, strict=True):
            yield sample_id, enc.ids
