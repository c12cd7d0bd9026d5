"""The headless runner behind `dte daemon`: cycles until growth completes or a stop, for months.

What keeps it dependable:

- **One daemon per workspace, by lock.** ``daemon.lock`` is held with ``flock`` for the life of
  the process; the kernel drops it however the process ends, so a pid file left by a crash
  (or a reused pid) never blocks a restart, and a second daemon is refused while one runs.
- **Stops at a step boundary.** SIGTERM/SIGINT and a ``stop`` control row only raise a flag;
  the cycle and the trainer ask it between units of work, the trainer saves a partial
  checkpoint, and the run ends ``stopped``. A second signal interrupts at once (still
  resumable). SIGKILL loses only the uncommitted step: every phase resumes from SQLite.
- **Control through the store.** `dte daemon pause|resume|stop` and the TUI write ``control``
  rows; a thread polls them and marks each handled. A pause holds at the next boundary.
  A ``stop`` queued while no daemon ran is expired at start, not obeyed.
- **Failures retried.** A cycle that raises is logged with its traceback and retried after a
  doubling wait (``[daemon] retry_initial_s`` up to ``retry_max_s``); the daemon lives on.
- **A rotating log** in ``<workspace>/logs/daemon.log``; the pid file ``daemon.pid`` holds JSON
  (pid, state, started_at) that `dte daemon status` and `dte watch` read.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from dte_aar.atomic import atomic_write_text
from dte_aar.config import DaemonSettings, Settings
from dte_aar.hookspecs import Event, Stopped, hookimpl
from dte_aar.store import Store, now

LOCK_FILE = "daemon.lock"
PID_FILE = "daemon.pid"
LOG_FILE = Path("logs") / "daemon.log"
STDERR_FILE = Path("logs") / "daemon.stderr"
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
State = Literal["starting", "running", "paused", "retrying", "stopping"]

log = logging.getLogger("dte_aar.daemon")


class AlreadyRunning(Exception):
    """Another daemon holds this workspace's lock."""


class DaemonInfo(BaseModel):
    """What ``daemon.pid`` says about the daemon (read by `dte daemon status` and the TUI)."""

    pid: int
    state: State = "starting"
    started_at: str = ""
    workspace: str = ""
    cycle: int | None = None
    failures: int = 0


def lock_path(workspace: Path) -> Path:
    return Path(workspace) / LOCK_FILE


def pid_path(workspace: Path) -> Path:
    return Path(workspace) / PID_FILE


def log_path(workspace: Path) -> Path:
    return Path(workspace) / LOG_FILE


# --------------------------------------------------------------------------- lock & pid file
class WorkspaceLock:
    """An exclusive ``flock`` on ``daemon.lock``, kept until release or process death."""

    def __init__(self, workspace: Path) -> None:
        self.path = lock_path(workspace)
        self.fd: int | None = None

    def acquire(self, wait_s: float = 0.0) -> bool:
        """Take the lock, retrying for ``wait_s`` (a status probe holds it for microseconds)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.05)
                continue
            self.fd = fd
            return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def lock_held(workspace: Path) -> bool:
    """True while some process holds the workspace's daemon lock."""
    if not lock_path(workspace).exists():
        return False
    probe = WorkspaceLock(workspace)
    if probe.acquire():
        probe.release()
        return False
    return True


def read_info(workspace: Path) -> DaemonInfo | None:
    """The pid file's contents; None when missing or unreadable (a bare pid is accepted)."""
    try:
        text = pid_path(workspace).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    try:
        data = json.loads(text)
        if isinstance(data, int):  # a bare pid, as other tools write one
            data = {"pid": data}
        return DaemonInfo.model_validate(data)
    except (json.JSONDecodeError, ValidationError):
        return None


def running(workspace: Path) -> DaemonInfo | None:
    """The live daemon's info, or None. The lock decides; the pid file only describes."""
    if not lock_held(workspace):
        return None
    info = read_info(workspace)
    if info is None:  # locked but the pid file is not written yet (starting)
        return DaemonInfo(pid=0, started_at="", workspace=str(workspace))
    return info


def write_info(workspace: Path, info: DaemonInfo) -> None:
    atomic_write_text(pid_path(workspace), info.model_dump_json())


# --------------------------------------------------------------------------- requests
class Requests:
    """Stop and pause flags, set from signal handlers and the control poller.

    Plain attribute writes only: a signal handler runs between bytecodes of the main thread
    and must not take a lock that thread may hold.
    """

    def __init__(self, on_state: Callable[[State], None]) -> None:
        self.stop = False
        self.stopping = False  # the stop has been seen (logged, published)
        self.paused = False
        self.signals = 0
        self.signal_name = ""
        self.on_state = on_state

    def should_stop(self) -> bool:
        """Asked between units of work; blocks while paused. The first time it sees a stop,
        it says so in the log and the pid file (a second `dte daemon stop` then only waits)."""
        if self.stop and not self.stopping:
            self.stopping = True
            log.info("stop requested%s: finishing the current step, then stopping",
                     f" ({self.signal_name})" if self.signal_name else "")  # fmt: skip
            self.on_state("stopping")
        if self.paused and not self.stop:
            self.on_state("paused")
            while self.paused and not self.stop:
                time.sleep(0.2)
            if not self.stop:
                self.on_state("running")
        return self.stop

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if a stop arrives."""
        deadline = time.monotonic() + seconds
        while not self.stop and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        if self.signals > 1:
            raise KeyboardInterrupt  # a second signal: stop now, the phase stays resumable
        self.signal_name = signal.Signals(signum).name  # logged by should_stop, not here
        self.stop = True


class ControlPoller(threading.Thread):
    """Reads pending ``control`` rows every ``interval`` s on its own connection."""

    def __init__(self, workspace: Path, requests: Requests, interval: float) -> None:
        super().__init__(name="dte-control", daemon=True)
        self.workspace, self.requests, self.interval = workspace, requests, interval
        self.halt = threading.Event()

    def run(self) -> None:
        with Store.open(self.workspace) as store:
            while not self.halt.is_set():
                try:
                    self.poll(store)
                except Exception as exc:  # a locked or busy store: try again next tick
                    log.warning("control poll failed: %s", exc)
                self.halt.wait(self.interval)

    def poll(self, store: Store) -> None:
        rows = store.db.execute(
            "select id, command from control where handled_at is null order by id"
        ).fetchall()
        for row_id, command in rows:
            if command == "stop":
                self.requests.stop = True
            elif command == "pause":
                self.requests.paused = True
            elif command == "resume":
                self.requests.paused = False
            log.info("control request %d: %s", row_id, command)
            with store.db.conn:
                store.db["control"].update(row_id, {"handled_at": now()})
            store.add_event(f"daemon_{command}", data={"control_id": row_id, "pid": os.getpid()})


def expire_stale_stops(store: Store) -> int:
    """Mark ``stop`` rows written while no daemon ran as handled: they are not for this one."""
    with store.db.conn:
        cursor = store.db.execute(
            "update control set handled_at = ? where handled_at is null and command = 'stop'",
            [now()],
        )
    return cursor.rowcount


class EventLog:
    """A plugin that copies every cycle event into the daemon's log."""

    @hookimpl
    def on_event(self, event: Event) -> None:
        where = " ".join(
            f"{k} {v}" for k, v in (("cycle", event.cycle), ("phase", event.phase)) if v is not None
        )
        data = {k: v for k, v in event.data.items() if k != "trace"}
        log.info("%s%s%s", event.kind, f" [{where}]" if where else "",
                 f" {json.dumps(data, default=str)}" if data else "")  # fmt: skip


def backoff(failures: int, cfg: DaemonSettings) -> float:
    """Seconds to wait after the ``failures``-th failure in a row: doubling, capped."""
    return min(cfg.retry_max_s, cfg.retry_initial_s * 2 ** max(0, failures - 1))


# --------------------------------------------------------------------------- the runner
def setup_logging(workspace: Path, cfg: DaemonSettings, to_stderr: bool) -> None:
    path = log_path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = RotatingFileHandler(
        path, maxBytes=cfg.log_max_bytes, backupCount=cfg.log_backups, encoding="utf-8"
    )
    handlers: list[logging.Handler] = [handler]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(logging.Formatter(LOG_FORMAT))
        log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False


def run_daemon(
    workspace: Path,
    settings: Settings,
    make_cycle: Callable[..., Any],
    cycles: int | None = None,
    to_stderr: bool = True,
) -> str:
    """Run cycles in this process until done, ``cycles`` cycles, or a stop; return the run's
    end status. ``make_cycle(store, say, should_stop)`` builds the :class:`~dte_aar.cycle.Cycle`.
    Raises :class:`AlreadyRunning` when another daemon holds the workspace."""
    workspace = Path(workspace)
    lock = WorkspaceLock(workspace)
    if not lock.acquire(wait_s=2.0):
        info = read_info(workspace)
        raise AlreadyRunning(
            f"{workspace}: a daemon is already running"
            + (f" (pid {info.pid})" if info and info.pid else "")
        )
    setup_logging(workspace, settings.daemon, to_stderr)
    info = DaemonInfo(pid=os.getpid(), started_at=now(), workspace=str(workspace))

    def set_state(state: State | None = None) -> None:
        """Publish a state change (or, with None, the cycle now under way)."""
        if state is None or info.state != state:
            info.state = state or info.state
            write_info(workspace, info)

    requests = Requests(set_state)
    previous = {s: signal.signal(s, requests.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal is no reason to stop
    poller = ControlPoller(workspace, requests, settings.daemon.poll_interval_s)
    status = "failed"
    try:
        write_info(workspace, info)
        with Store.open(workspace) as store:
            if expired := expire_stale_stops(store):
                log.info("ignored %d stop request(s) made while no daemon ran", expired)
            poller.start()
            runner = make_cycle(store, log.info, requests.should_stop)
            runner.begin(cycles)
            runner.event("daemon_started", data={"pid": info.pid})
            log.info("daemon started: pid %d, workspace %s", info.pid, workspace)
            set_state("running")
            try:
                status = _loop(runner, requests, settings.daemon, cycles, info, set_state)
            except KeyboardInterrupt:
                status = "interrupted"
            finally:
                runner.event("daemon_stopped", data={"pid": info.pid, "status": status})
                runner.finish(status)
    finally:
        poller.halt.set()
        if poller.is_alive():
            poller.join(timeout=settings.daemon.poll_interval_s + 5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        pid_path(workspace).unlink(missing_ok=True)
        log.info("daemon exiting: %s", status)
        lock.release()
    return status


def _loop(
    runner: Any,
    requests: Requests,
    cfg: DaemonSettings,
    cycles: int | None,
    info: DaemonInfo,
    set_state: Callable[..., None],
) -> str:
    done = 0
    while True:
        if requests.should_stop():
            return "stopped"
        try:
            n = runner.next_cycle()
            if info.cycle != n:
                info.cycle = n
                set_state()
            outcome = runner.run_cycle(n)
        except Stopped as exc:
            log.info("stopped: %s", exc)
            return "stopped"
        except Exception as exc:  # the cycle, a plugin, the store or the disk: wait, retry
            info.failures += 1
            wait = backoff(info.failures, cfg)
            log.exception("cycle %s failed (%d in a row); retrying in %.0f s", info.cycle,
                          info.failures, wait)  # fmt: skip
            with contextlib.suppress(Exception):  # the store may be what failed
                runner.event("daemon_retry", info.cycle, data={
                    "error": f"{type(exc).__name__}: {exc}", "failures": info.failures,
                    "wait_s": wait,
                })  # fmt: skip
            with contextlib.suppress(OSError):
                set_state("retrying")
            requests.sleep(wait)
            with contextlib.suppress(OSError):
                set_state("running")
            continue
        info.failures = 0
        if outcome is None:
            return "done"
        done += 1
        log.info("cycle %d done: %d layers, %d kept, %d rejected, %.0f s", outcome.n,
                 outcome.layers, outcome.accepted, outcome.rejected, outcome.seconds)  # fmt: skip
        if cycles is not None and done >= cycles:
            return "done"


# --------------------------------------------------------------------------- from the CLI
def spawn(workspace: Path, argv: list[str], wait_s: float = 30.0) -> DaemonInfo | None:
    """Start ``python -m dte_aar <argv>`` detached (new session, no terminal); return its info
    once it holds the lock and has written its pid file, or None if it ran to a clean end
    before that (nothing left to do). If it fails first, raise RuntimeError with the last
    lines it printed this time."""
    err = Path(workspace) / STDERR_FILE
    err.parent.mkdir(parents=True, exist_ok=True)
    offset = err.stat().st_size if err.exists() else 0
    with open(err, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dte_aar", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        info = read_info(workspace)
        if info is not None and info.pid == proc.pid:
            return info
        code = proc.poll()
        if code == 0:
            return None
        if code is not None:
            with open(err, "rb") as handle:
                handle.seek(offset)
                tail = handle.read().decode("utf-8", "replace").strip().splitlines()[-5:]
            raise RuntimeError("the daemon exited at start: " + " / ".join(tail))
        time.sleep(0.1)
    raise RuntimeError(f"the daemon did not start within {wait_s:.0f} s; see {err}")


def terminate(workspace: Path, timeout_s: float, kill: bool) -> str:
    """Ask the running daemon to stop (control row and SIGTERM) and wait for its lock to go."""
    info = running(workspace)
    if info is None:
        return "not running"
    if info.state != "stopping":  # a second SIGTERM would interrupt the checkpoint write
        with Store.open(workspace) as store, store.db.conn:
            store.db["control"].insert({"ts": now(), "command": "stop", "handled_at": None})
        if info.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not lock_held(workspace):
            return "stopped"
        time.sleep(0.1)
    if kill and info.pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGKILL)
        while lock_held(workspace):
            time.sleep(0.05)
        return "killed"
    return "still stopping"


def uptime(info: DaemonInfo) -> float | None:
    try:
        started = dt.datetime.fromisoformat(info.started_at)
    except ValueError:
        return None
    if started.tzinfo is None:
        started = started.replace(tzinfo=dt.UTC)
    return (dt.datetime.now(dt.UTC) - started).total_seconds()
