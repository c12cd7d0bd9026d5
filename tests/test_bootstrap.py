"""The whole loop, run the way a user runs it: the `dte` entry point in a subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dte_aar.store import Store
from helpers import FAST_CONFIG, run_dte

README = Path(__file__).resolve().parents[1] / "README.md"


def counts(ws: Path) -> dict[str, int]:
    with Store.open(ws, readonly=True) as store:
        return {
            table: store.db[table].count
            for table in ("samples", "verdicts", "checkpoints", "cycles")
        }


def corpus(ws: Path) -> list[tuple]:
    with Store.open(ws, readonly=True) as store:
        return list(
            store.db.execute(
                "select cycle, source, generator, slot, text, status from samples order by id"
            )
        )


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One uninterrupted 3-cycle run, shared by the tests that compare against it."""
    ws = tmp_path_factory.mktemp("grown")
    (ws / "dte.toml").write_text(FAST_CONFIG)
    result = run_dte("bootstrap", "--workspace", str(ws))
    assert result.returncode == 0, result.stderr + result.stdout
    return ws, result


def test_three_cycles_grow_as_the_stage_gates_decide_and_perplexity_falls(grown) -> None:
    ws, result = grown
    with Store.open(ws, readonly=True) as store:
        cycles = store.cycles()
        assert [c["n"] for c in cycles] == [0, 1, 2]
        assert all(c["status"] == "done" for c in cycles)
        # Stage 1 (primordial, one layer, two cycles at most) holds the depth until its
        # milestone, phrase completion, clears its bar; then the model grows a layer a cycle.
        passed = store.metric_by_cycle("phrase_completion_pass")
        bar = store.metric_by_cycle("phrase_completion_bar")
        assert set(passed) == {0, 1, 2} and bar[0] == 0.25
        want = [1, 1 + 1 if passed[0] else 1]
        want.append(want[1] + 1)  # passed, or stage 1's two-cycle budget spent
        assert [c["layers"] for c in cycles] == want
        latest = store.latest_checkpoint()
        assert latest is not None and latest.layers == want[-1] and latest.path.exists()
        ppl = store.metric_by_cycle("heldout_ppl")
        assert ppl[0] > ppl[1] > ppl[2], ppl
        phases = store.db.execute(
            "select cycle, phase from events where kind = 'phase_ended' order by id"
        ).fetchall()
        assert phases[:6] == [
            (0, "generate"), (0, "curate"), (0, "train"), (0, "evaluate"), (0, "checkpoint"),
            (0, "commit"),
        ]  # fmt: skip
        generated = store.samples("source = 'generated'", [])
        assert generated, "cycles after the first sample the model itself"
        for sample in generated:
            assert sample.finish_reason in ("stop", "length")  # stored from the generator
            verdicts = store.verdicts_for(sample.id)
            assert {v["curator"] for v in verdicts} == {"quality", "dedup"}
            assert all(v["reason"] for v in verdicts)
    assert "bootstrap summary" in result.stdout
    assert "held-out ppl" in result.stdout and f"{want[-1]} layers" in result.stdout


def test_status_reads_the_workspace(grown) -> None:
    ws, _ = grown
    result = run_dte("status", "-w", str(ws))
    assert result.returncode == 0, result.stderr
    assert "parameters" in result.stdout and "FLOPs/token" in result.stdout
    with Store.open(ws, readonly=True) as store:
        layers = store.latest_checkpoint().layers
    assert re.search(rf"model: {layers} layers", result.stdout)
    assert "stage 2: semantic" in result.stdout
    (ws / "dte.toml").write_text(
        FAST_CONFIG
        + '\n[[stages]]\nname = "one"\nlast_layer = 1\nmax_cycles = 1\n'
        + 'milestone = "heldout_ppl"\nthreshold = 1.0\n'
        + '[[stages]]\nname = "big"\nmax_cycles = 1\nmilestone = "heldout_ppl"\n'
        + "threshold = 1.0\ncorpus_target = 5000\n"
    )
    try:
        report = json.loads(run_dte("status", "-w", str(ws), "--json").stdout)
    finally:
        (ws / "dte.toml").write_text(FAST_CONFIG)
    assert report["stage"]["name"] == "big" and report["stage"]["corpus_target"] == 5000
    assert report["stage"]["accepted"] == sum(
        v for k, v in report["corpus"].items() if k.endswith(":accepted")
    )


def wait_for(ws: Path, sql: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    db = ws / "dte.db"
    while time.monotonic() < deadline:
        assert proc.poll() is None, "bootstrap ended before the kill point"
        if db.exists():
            try:
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                row = conn.execute(sql).fetchone()
                conn.close()
                if row:
                    return
            except sqlite3.OperationalError:
                pass
        time.sleep(0.01)
    raise AssertionError("kill point never reached")


def test_resume_after_sigkill_during_training_matches_uninterrupted_run(grown, tmp_path) -> None:
    reference, _ = grown
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "dte.toml").write_text(FAST_CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dte_aar", "bootstrap", "-w", str(ws)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_for(ws, "select 1 from cycles where n = 1 and phase_train = 'running'", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with Store.open(ws, readonly=True) as store:
        killed = store.cycle(1)
        assert killed["status"] == "running" and killed["phase_train"] == "running"
        assert store.latest_checkpoint().cycle == 0  # nothing half-done taken for good
    result = run_dte("bootstrap", "-w", str(ws), "--cycles", "2")
    assert result.returncode == 0, result.stderr
    assert "resuming cycle 1" in result.stderr
    assert counts(ws) == counts(reference)
    assert corpus(ws) == corpus(reference)
    with Store.open(ws, readonly=True) as a, Store.open(reference, readonly=True) as b:
        assert a.latest_checkpoint().sha256 == b.latest_checkpoint().sha256


def test_ctrl_c_stops_cleanly_and_resumes(tmp_path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    # Long enough training that the interrupt lands inside it, not after the run ended.
    slow = FAST_CONFIG.replace("cycles = 3", "cycles = 2")
    (ws / "dte.toml").write_text(slow.replace("steps_per_cycle = 30", "steps_per_cycle = 400"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dte_aar", "bootstrap", "-w", str(ws)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
        # As at a terminal: a shell running tests in the background hands its children an
        # ignored SIGINT, which Python then keeps ignoring.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for(ws, "select 1 from cycles where n = 1 and phase_train = 'running'", proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-3000:]  # what it said, should it ever fail
    assert "run `dte bootstrap` again to resume" in stderr
    assert "Traceback" not in stderr
    with Store.open(ws, readonly=True) as store:
        assert store.db["runs"].get(1)["status"] == "interrupted"
        assert store.cycle(1)["status"] == "running"
    result = run_dte("bootstrap", "-w", str(ws), "--cycles", "1")
    assert result.returncode == 0, result.stderr
    with Store.open(ws, readonly=True) as store:
        assert [c["status"] for c in store.cycles()] == ["done", "done"]
        assert store.latest_checkpoint().layers == store.cycle(1)["layers"]


def test_altered_checkpoint_is_never_registered(tmp_path) -> None:
    """A file changed between train and checkpoint is rejected and training runs again."""
    from dte_aar.arena import load_arena
    from dte_aar.config import load_settings
    from dte_aar.cycle import Cycle
    from dte_aar.plugins import load

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "dte.toml").write_text(FAST_CONFIG)
    settings = load_settings(ws, cycles=1)
    with Store.open(ws) as store:
        runner = Cycle(settings, ws, store, load(), load_arena(settings.arena))
        original = runner._checkpoint
        tampered = []

        def tamper_then_check(ctx, outcome):
            if not tampered:
                record = runner._train_record(ctx.cycle)
                with open(record["path"], "r+b") as handle:
                    handle.seek(100)
                    handle.write(b"\x00\x01\x02")
                tampered.append(record["path"])
            return original(ctx, outcome)

        runner._checkpoint = tamper_then_check
        runner.run(1)
        kinds = [r[0] for r in store.db.execute("select kind from events order by id")]
        assert "checkpoint_rejected" in kinds
        assert kinds.count("phase_ended") == 8  # train, evaluate ran twice
        good = store.latest_checkpoint()
        from dte_aar.cycle import sha256_file

        assert sha256_file(good.path) == good.sha256


def readme_block(after: str, language: str) -> str:
    text = README.read_text()
    start = text.index(after)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(text, start)
    assert match, f"no {language} block after {after!r}"
    return match.group(1)


def write_readme_plugin(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "dte_remix.py").write_text(readme_block("## Write a plugin", "python"))
    (directory / "pyproject.toml").write_text(readme_block("Its `pyproject.toml`", "toml"))
    return directory


def test_readme_plugin_installed_with_pip_is_listed_and_used(tmp_path) -> None:
    package = write_readme_plugin(tmp_path / "dte-remix")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(package)],
        check=True, capture_output=True,
    )  # fmt: skip
    env = {"PYTHONPATH": str(target)}
    listed = run_dte("plugins", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    row = next(p for p in json.loads(listed.stdout)["plugins"] if p["name"] == "remix")
    assert row["version"] == "0.1.0"
    assert row["hooks"] == ["register_curators", "register_generators"]
    assert row["components"] == ["curator:first_person", "generator:remix"]
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "dte.toml").write_text(FAST_CONFIG.replace("cycles = 3", "cycles = 1") + "\n".join([""]))
    env |= {
        "DTE_GENERATORS": '["checkpoint","remix"]',
        "DTE_CURATORS": '["quality","dedup","first_person"]',
    }
    result = run_dte("bootstrap", "-w", str(ws), env=env)
    assert result.returncode == 0, result.stderr
    with Store.open(ws, readonly=True) as store:
        remixed = store.samples("generator = 'remix'", [])
        assert len(remixed) == 4
        curators = {v["curator"] for s in remixed for v in store.verdicts_for(s.id)}
        assert curators == {"quality", "dedup", "first_person"}
        assert store.db.execute("select count(*) from samples where generator = 'remix' "
                                "and status = 'accepted'").fetchone()[0] > 0  # fmt: skip


def test_crashing_generator_costs_only_its_own_slots(tmp_path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "flaky.py").write_text(
        "from dte_aar.hookspecs import Candidate, hookimpl\n"
        "class Flaky:\n"
        "    name = 'flaky'\n"
        "    def generate(self, requests, ctx):\n"
        "        yield Candidate(requests[0].slot, 'I keep this one sentence about my reservoir '\n"
        "                        'and the membrane around it, written before the crash.', 'p')\n"
        "        raise ConnectionError('server went away')\n"
        "@hookimpl\n"
        "def register_generators(register):\n"
        "    register(Flaky())\n"
    )
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "dte.toml").write_text(FAST_CONFIG.replace("cycles = 3", "cycles = 1"))
    result = run_dte(
        "--plugins-dir", str(plugins), "bootstrap", "-w", str(ws),
        env={"DTE_GENERATORS": '["flaky"]'},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "plugin 'flaky' (flaky) failed in generate: ConnectionError: server went away" in (
        result.stderr
    )
    with Store.open(ws, readonly=True) as store:
        assert [s.text[:6] for s in store.samples("generator = 'flaky'", [])] == ["I keep"]
        assert store.cycle(0)["status"] == "done"
        failed = store.db.execute("select data from events where kind = 'plugin_failed'")
        assert "server went away" in failed.fetchone()[0]
