"""Shared fixtures: small, seeded workspaces so the whole suite stays fast on 2 CPU cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import FAST_CONFIG

# Tiny models run fastest on one thread, and every process of a test (module fixtures and
# the `dte` subprocesses included) must use the same count for bit-identical results.
os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DTE_* variable from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("DTE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "dte.toml").write_text(FAST_CONFIG)
    return ws
