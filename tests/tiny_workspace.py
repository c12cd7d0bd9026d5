"""A tiny but real workspace (tokenizer, one trained cycle, registered checkpoint), built once
per test session by the real cycle and copied for each user, so the serving, generator and
fine-tuning tests share one ~5 s build."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

TINY_CONFIG = """\
cycles = 1
seed = 7
generators = []
evaluators = []
curators = ["quality"]
[train]
steps_per_cycle = 6
batch_size = 4
seq_len = 64
vocab_size = 300
warmup_steps = 1
embedding_init = "random"
cooc_rank = 0
device = "cpu"
[generate]
samples_per_cycle = 0
[plugins.progressive]
d_model = 32
n_heads = 2
d_ff = 64
target_layers = 4
"""

_built: dict[str, Path] = {}


def run_cycles(ws: Path, cycles: int = 1, plugins: dict[str, object] | None = None) -> list:
    """Run the real cycle in-process on ``ws`` (entry-point plugins plus ``plugins``)."""
    from dte_aar import plugins as plugin_loading
    from dte_aar.arena import load_arena
    from dte_aar.config import load_settings
    from dte_aar.cycle import Cycle
    from dte_aar.store import Store

    settings = load_settings(ws)
    manager = plugin_loading.load()
    for name, module in (plugins or {}).items():
        manager.register(module, name)
    with Store.open(ws) as store:
        runner = Cycle(settings, ws, store, manager, load_arena(settings.arena))
        return runner.run(cycles)


def tiny_workspace(dest: Path) -> Path:
    """A copy of the session's tiny workspace at ``dest``."""
    if "ws" not in _built:
        import atexit
        import tempfile

        base = Path(tempfile.mkdtemp(prefix="dte-tiny-"))
        owner = os.getpid()

        def cleanup() -> None:  # forked children (DDP ranks) inherit atexit: not theirs
            if os.getpid() == owner:
                shutil.rmtree(base, True)

        atexit.register(cleanup)
        ws = base / "ws"
        ws.mkdir()
        (ws / "dte.toml").write_text(TINY_CONFIG)
        run_cycles(ws)
        _built["ws"] = ws
    shutil.copytree(_built["ws"], dest)
    with sqlite3.connect(dest / "dte.db") as db:  # the store records absolute paths
        db.execute(
            "update checkpoints set path = replace(path, ?, ?)", [str(_built["ws"]), str(dest)]
        )
    return dest
