"""Helpers shared by tests (imported as `helpers`; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys

# Tiny but real: the default arena, a tiny model, a handful of steps and samples.
FAST_CONFIG = """\
cycles = 3
seed = 7
[train]
steps_per_cycle = 30
batch_size = 8
seq_len = 64
vocab_size = 512
warmup_steps = 3
[generate]
samples_per_cycle = 4
max_new_tokens = 24
"""


def run_dte(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run the real `dte` entry point in a subprocess (as a user would)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DTE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "dte_aar", *args],
        capture_output=True,
        text=True,
        env=full_env,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )
