"""`dte daemon`: detached start, lock, clean SIGTERM, SIGKILL recovery, control rows, retries."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_workspace import TINY_CONFIG, run_cycles

from dte_aar import daemon as d
from dte_aar.config import DaemonSettings
from helpers import run_dte

# Long enough that the daemon is surely mid-training when the test acts, short enough that
# an uninterrupted reference run takes a few seconds.
DAEMON_CONFIG = (
    TINY_CONFIG.replace("steps_per_cycle = 6", "steps_per_cycle = 1500")
    .replace("cycles = 1", "cycles = 2")
    .replace("seq_len = 64", "seq_len = 32")
)


def workspace(tmp_path: Path, name: str, config: str = DAEMON_CONFIG) -> Path:
    ws = tmp_path / name
    ws.mkdir()
    (ws / "dte.toml").write_text(config, encoding="utf-8")
    return ws


def query(ws: Path, sql: str, args: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(f"file:{ws / 'dte.db'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def wait_for(predicate, timeout: float = 90.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except sqlite3.OperationalError:  # the database is not created yet
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def trained_steps(ws: Path, cycle: int) -> int:
    rows = query(ws, "select max(step) from metrics where cycle = ? and name = 'lr'", (cycle,))
    return rows[0][0] or 0


def start(ws: Path, *args: str) -> subprocess.CompletedProcess:
    result = run_dte("daemon", "start", "-w", str(ws), *args, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def wait_stopped(ws: Path, timeout: float = 120.0) -> None:
    wait_for(lambda: not d.lock_held(ws), timeout, "the daemon to exit")


def test_sigterm_mid_training_checkpoints_and_the_next_start_finishes_identically(tmp_path):
    ref = workspace(tmp_path, "ref", DAEMON_CONFIG.replace("cycles = 2", "cycles = 1"))
    run_cycles(ref, 1)
    ws = workspace(tmp_path, "ws")

    start(ws, "--cycles", "1")
    wait_for(lambda: d.read_info(ws).state == "running", 60, "the running state")
    info = d.read_info(ws)
    assert info.pid != os.getpid()
    status = run_dte("daemon", "status", "-w", str(ws), "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["pid"] == info.pid
    wait_for(lambda: trained_steps(ws, 0) >= 50, what="50 training steps")
    assert d.read_info(ws).cycle == 0  # the pid file says which cycle runs

    stopped = run_dte("daemon", "stop", "-w", str(ws), timeout=120)
    assert stopped.returncode == 0 and "daemon stopped" in stopped.stdout, stopped.stderr
    assert not d.pid_path(ws).exists()
    ((phase, cycle_status),) = query(ws, "select phase_train, status from cycles where n = 0")
    assert (phase, cycle_status) == ("stopped", "running")
    assert query(ws, "select status from runs order by id desc limit 1") == [("stopped",)]
    done_steps = trained_steps(ws, 0)
    assert 50 <= done_steps < 1499
    partial = ws / "checkpoints" / "partial" / "cycle-0000.safetensors"
    meta = json.loads(partial.with_suffix(".json").read_text())
    assert meta["train_state"]["step"] == done_steps + 1  # the step under way was finished
    status = run_dte("daemon", "status", "-w", str(ws))
    assert status.returncode == d_not_running() and "not running" in status.stdout

    start(ws, "--cycles", "1")
    wait_stopped(ws)
    assert not partial.exists()
    resumed = query(ws, "select step from metrics where cycle = 0 and name = 'resumed_at_step'")
    assert resumed == [(done_steps + 1,)]
    steps = query(ws, "select step from metrics where cycle = 0 and name = 'lr' order by step")
    assert [s for (s,) in steps] == list(range(1500))  # every step once: none lost or doubled
    sha = query(ws, "select sha256 from checkpoints where cycle = 0 and status = 'good'")
    want = query(ref, "select sha256 from checkpoints where cycle = 0 and status = 'good'")
    assert sha == want and sha  # bit for bit the uninterrupted run's weights


def d_not_running() -> int:
    from dte_aar.daemon_cli import NOT_RUNNING_EXIT

    return NOT_RUNNING_EXIT


def test_sigkill_then_start_resumes_without_loss_or_duplicates(tmp_path):
    config = DAEMON_CONFIG.replace("samples_per_cycle = 0", "samples_per_cycle = 3")
    config = config.replace("generators = []", 'generators = ["checkpoint"]')
    ws = workspace(tmp_path, "ws", config)
    start(ws, "--cycles", "2")
    wait_for(lambda: trained_steps(ws, 1) >= 20, what="cycle 1 training")
    before = query(ws, "select id, cycle, slot, text from samples order by id")
    assert any(row[1] == 1 for row in before)  # cycle 1's samples were written
    pid = d.read_info(ws).pid
    os.kill(pid, signal.SIGKILL)
    wait_stopped(ws, 30)

    stale = run_dte("daemon", "status", "-w", str(ws), "--json")
    report = json.loads(stale.stdout)
    assert stale.returncode == d_not_running() and report["stale_pid"] == pid
    start(ws, "--cycles", "1")  # the stale pid file does not block
    wait_stopped(ws)
    after = query(ws, "select id, cycle, slot, text from samples order by id")
    assert after[: len(before)] == before  # nothing committed was lost or rewritten
    slots = query(
        ws,
        "select cycle, generator, slot, count(*) from samples where source = 'generated' "
        "group by 1, 2, 3 having count(*) > 1",
    )
    assert slots == []  # no duplicates
    assert query(ws, "select n, status from cycles order by n") == [(0, "done"), (1, "done")]
    assert len(query(ws, "select id from checkpoints where cycle = 1 and status = 'good'")) == 1


def test_a_second_daemon_is_refused_and_control_rows_pause_resume_and_stop(tmp_path):
    ws = workspace(tmp_path, "ws", DAEMON_CONFIG.replace("1500", "100000"))
    start(ws)
    second = run_dte("daemon", "start", "-w", str(ws), timeout=120)
    assert second.returncode == 2 and "already running" in second.stderr

    wait_for(lambda: trained_steps(ws, 0) >= 5, what="training")
    paused = run_dte("daemon", "pause", "-w", str(ws), timeout=60)
    assert paused.returncode == 0 and "paused" in paused.stdout
    wait_for(lambda: d.read_info(ws).state == "paused", 30, "the paused state")
    held = trained_steps(ws, 0)
    time.sleep(1.5)
    assert trained_steps(ws, 0) == held  # no step while paused
    assert run_dte("daemon", "resume", "-w", str(ws), timeout=60).returncode == 0
    wait_for(lambda: trained_steps(ws, 0) > held, 30, "training to go on")

    from dte_aar.tui.queries import request_control

    request_control(ws, "stop")  # what the TUI's stop key writes: no signal at all
    wait_stopped(ws, 60)
    handled = query(ws, "select command, handled_at is not null from control order by id")
    assert handled == [("pause", 1), ("resume", 1), ("stop", 1)]
    assert query(ws, "select phase_train from cycles where n = 0") == [("stopped",)]


def test_a_stop_queued_while_no_daemon_ran_is_not_obeyed(tmp_path):
    ws = workspace(tmp_path, "ws", DAEMON_CONFIG.replace("1500", "30"))
    run_cycles(ws, 1)  # creates the store
    from dte_aar.tui.queries import request_control

    request_control(ws, "stop")
    start(ws, "--cycles", "1")
    wait_stopped(ws)
    assert query(ws, "select n, status from cycles order by n") == [(0, "done"), (1, "done")]
    assert query(ws, "select handled_at is not null from control") == [(1,)]


def test_lock_not_pid_file_decides(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    d.pid_path(ws).write_text(json.dumps({"pid": gone.pid, "started_at": "", "workspace": "x"}))
    assert d.running(ws) is None and d.read_info(ws).pid == gone.pid
    holder = d.WorkspaceLock(ws)
    assert holder.acquire()
    try:
        assert d.lock_held(ws) and d.running(ws) is not None
        assert not d.WorkspaceLock(ws).acquire(wait_s=0.2)
    finally:
        holder.release()
    assert not d.lock_held(ws)


def test_backoff_doubles_and_is_capped():
    cfg = DaemonSettings(retry_initial_s=5, retry_max_s=60)
    assert [d.backoff(n, cfg) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]


class FlakyTrainer:
    """Fails its first call, then trains as the built-in trainer does."""

    name = "flaky"

    def __init__(self) -> None:
        self.calls = 0

    def train(self, ctx):
        from dte_aar_plugins.progressive import ProgressiveTrainer

        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("GPU fell off the bus")
        return ProgressiveTrainer().train(ctx)


def test_a_failing_cycle_is_retried_with_backoff_and_logged(tmp_path):
    from dte_aar import plugins as plugin_loading
    from dte_aar.arena import load_arena
    from dte_aar.config import load_settings
    from dte_aar.cycle import Cycle
    from dte_aar.hookspecs import hookimpl

    config = DAEMON_CONFIG.replace("1500", "10")
    config = 'trainer = "flaky"\n' + config
    config += "[daemon]\nretry_initial_s = 0.05\nlog_max_bytes = 4000\nlog_backups = 20\n"
    ws = workspace(tmp_path, "ws", config)
    settings = load_settings(ws)
    flaky = FlakyTrainer()

    class Plugin:
        @hookimpl
        def register_trainers(self, register):
            register(flaky)

    manager = plugin_loading.load()
    manager.register(Plugin(), "flaky")
    manager.register(d.EventLog(), "daemon-log")

    def make_cycle(store, say, should_stop):
        arena = load_arena(settings.arena)
        return Cycle(settings, ws, store, manager, arena, say=say, should_stop=should_stop)

    try:
        status = d.run_daemon(ws, settings, make_cycle, cycles=4, to_stderr=False)
    finally:
        for handler in list(d.log.handlers):
            d.log.removeHandler(handler)
            handler.close()
    assert status == "done" and flaky.calls == 5
    retry = query(ws, "select cycle, data from events where kind = 'daemon_retry'")
    assert len(retry) == 1 and retry[0][0] == 0
    assert json.loads(retry[0][1])["error"] == "RuntimeError: GPU fell off the bus"
    assert [r[0] for r in query(ws, "select status from cycles order by n")] == ["done"] * 4
    logs = sorted(p.name for p in (ws / "logs").iterdir())
    assert "daemon.log.1" in logs  # rotated at 4 kB
    text = "".join(p.read_text() for p in (ws / "logs").glob("daemon.log*"))
    assert "GPU fell off the bus" in text and "Traceback" in text
    shown = run_dte("daemon", "logs", "-w", str(ws), "-n", "3")
    assert shown.returncode == 0 and len(shown.stdout.splitlines()) == 3
    assert "daemon exiting: done" in shown.stdout
    assert not d.pid_path(ws).exists() and not d.lock_held(ws)


@pytest.mark.parametrize("command", ["pause", "resume"])
def test_control_commands_need_a_running_daemon(tmp_path, command):
    ws = workspace(tmp_path, "ws")
    result = run_dte("daemon", command, "-w", str(ws))
    assert result.returncode == 2 and "no daemon is running" in result.stderr


class BrokenStoreRunner:
    """A runner whose store fails once (as a full disk or a locked file would), events too."""

    def __init__(self) -> None:
        self.calls = 0
        self.ran: list[int] = []

    def next_cycle(self) -> int:
        self.calls += 1
        if self.calls == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return len(self.ran)

    def run_cycle(self, n: int):
        from dte_aar.cycle import CycleOutcome

        self.ran.append(n)
        return CycleOutcome(n=n, layers=n + 1)

    def event(self, *args, **kwargs) -> None:
        raise sqlite3.OperationalError("disk I/O error")


def test_the_loop_survives_a_failing_store_and_retries():
    runner = BrokenStoreRunner()
    states: list = []
    info = d.DaemonInfo(pid=1, started_at="", workspace="w")
    requests = d.Requests(states.append)
    cfg = DaemonSettings(retry_initial_s=0.01)
    status = d._loop(runner, requests, cfg, 2, info, lambda state=None: states.append(state))
    assert status == "done" and runner.ran == [0, 1] and info.failures == 0
    assert "retrying" in states and states[-1] is None  # published the retry, then the cycle


def test_a_stop_is_published_once_and_a_second_signal_interrupts():
    states: list = []
    requests = d.Requests(states.append)
    assert requests.should_stop() is False and states == []
    requests.on_signal(signal.SIGTERM, None)  # the handler only sets flags
    assert states == []
    assert requests.should_stop() and requests.should_stop()
    assert states == ["stopping"] and requests.signal_name == "SIGTERM"
    with pytest.raises(KeyboardInterrupt):
        requests.on_signal(signal.SIGTERM, None)
