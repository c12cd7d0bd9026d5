"""File helpers with no heavy imports, shared by the cycle (which must not need torch) and
the checkpoint module."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    """The file's sha256, read a megabyte at a time."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_checkpoint_files(path: Path) -> None:
    """Delete a checkpoint's weights, optimizer state and sidecar (``<stem>.*``)."""
    path = Path(path)
    for file in path.parent.glob(f"{path.stem}.*"):
        file.unlink(missing_ok=True)
