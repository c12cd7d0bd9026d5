"""A non-editable install finds the arena and the built-in plugins without the source tree."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import dte_aar, dte_aar_arena, dte_aar_plugins
from dte_aar.arena import load_arena
from dte_aar.plugins import load
target = {target!r}
for module in (dte_aar, dte_aar_arena, dte_aar_plugins):
    assert module.__file__.startswith(target), module.__file__
arena = load_arena("deep_tree_echo")
assert len(arena.seed) >= 120 and len(arena.probes) >= 30, len(arena.seed)
manager = load()
assert not manager.failures, manager.failures
names = {{row["name"] for row in manager.describe()}}
assert {{"checkpoint", "quality", "dedup", "progressive", "heldout"}} <= names, names
print("ok", len(arena.seed))
"""


def test_wheel_install_finds_arena_and_plugins(tmp_path: Path) -> None:
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(ROOT)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    assert not (target / "plugins").exists(), "must not install a generic `plugins` package"
    run = subprocess.run(
        [sys.executable, "-c", PROBE.format(target=str(target))],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("ok")
