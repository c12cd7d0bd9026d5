"""`dte daemon start|stop|status|logs|pause|resume`: the CLI face of :mod:`dte_aar.daemon`."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections import deque
from pathlib import Path

import click

from dte_aar import daemon as d
from dte_aar.cli import (
    UserError,
    _user_errors,
    console,
    err_console,
    load_arena,
    load_settings,
    manager,
    workspace_option,
)
from dte_aar.store import PHASES, Store, StoreError

NOT_RUNNING_EXIT = 3  # as `systemctl status` / LSB init scripts: program is not running


@click.group()
def daemon() -> None:
    """Run bootstrap cycles headless, and control the running daemon."""


@daemon.command()
@workspace_option
@click.option(
    "--cycles",
    "-n",
    type=click.IntRange(min=1),
    help="Stop after this many cycles (default: until done).",
)
@click.option("--foreground", is_flag=True, help="Run in this process (for systemd, containers).")
@click.option("--log-to-stderr/--no-log-to-stderr", default=True, hidden=True)
@_user_errors
def start(workspace: Path, cycles: int | None, foreground: bool, log_to_stderr: bool) -> None:
    """Start the daemon on a workspace; refused while another runs on it."""
    from dte_aar.cycle import Cycle, resolve_components

    workspace = workspace.resolve()
    settings = load_settings(workspace)
    arena = load_arena(settings.arena)
    resolve_components(settings, manager())  # a missing plugin fails here, not in the log
    if (info := d.running(workspace)) is not None:
        raise UserError(f"{workspace}: a daemon is already running (pid {info.pid})")
    workspace.mkdir(parents=True, exist_ok=True)
    if not foreground:
        argv = _child_argv(workspace, cycles)
        try:
            info = d.spawn(workspace, argv)
        except RuntimeError as exc:
            raise UserError(str(exc)) from None
        if info is None:
            console.print(f"the daemon ran and finished at once; see {d.log_path(workspace)}")
            return
        console.print(
            f"daemon started: pid {info.pid}  |  log: {d.log_path(workspace)}\n"
            f"watch it with `dte watch {workspace}`; stop it with `dte daemon stop -w {workspace}`",
            highlight=False,
        )
        return

    def make_cycle(store: Store, say, should_stop) -> Cycle:
        pm = manager()
        pm.register(d.EventLog(), "dte-daemon-log")
        return Cycle(settings, workspace, store, pm, arena, say=say, should_stop=should_stop)

    try:
        status = d.run_daemon(workspace, settings, make_cycle, cycles, to_stderr=log_to_stderr)
    except d.AlreadyRunning as exc:
        raise UserError(str(exc)) from None
    sys.exit(130 if status == "interrupted" else 0)


def _child_argv(workspace: Path, cycles: int | None) -> list[str]:
    root = click.get_current_context().find_root()
    argv = []
    if plugins_dir := root.params.get("plugins_dir"):
        argv += ["--plugins-dir", str(Path(plugins_dir).resolve())]
    argv += ["daemon", "start", "--foreground", "--no-log-to-stderr", "-w", str(workspace)]
    if cycles is not None:
        argv += ["--cycles", str(cycles)]
    return argv


@daemon.command()
@workspace_option
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for the exit.")
@click.option("--kill", is_flag=True, help="SIGKILL it if it has not stopped by then.")
def stop(workspace: Path, timeout: float, kill: bool) -> None:
    """Stop the daemon: it finishes the current training step and writes a checkpoint."""
    if d.running(workspace) is None:
        _remove_stale_pid(workspace)
        console.print(f"no daemon is running on {workspace}")
        return
    console.print("stopping: finishing the current step, then checkpointing...")
    outcome = d.terminate(workspace, timeout, kill)
    if outcome == "still stopping":
        err_console.print(
            f"still stopping after {timeout:.0f} s; wait, or run again with --kill "
            "(safe: the next start resumes)"
        )
        sys.exit(1)
    console.print(f"daemon {outcome}")


def _remove_stale_pid(workspace: Path) -> None:
    if (info := d.read_info(workspace)) is not None:
        d.pid_path(workspace).unlink(missing_ok=True)
        console.print(f"removed a stale pid file (pid {info.pid} is gone)")


@daemon.command()
@workspace_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(workspace: Path, as_json: bool) -> None:
    """Is a daemon running, and where is it? Exit code 3 when none is."""
    info = d.running(workspace)
    stale = d.read_info(workspace) if info is None else None
    report = {
        "workspace": str(workspace),
        "running": info is not None,
        "pid": info.pid if info else None,
        "state": info.state if info else "not running",
        "started_at": info.started_at if info else None,
        "uptime_s": d.uptime(info) if info else None,
        "failures_in_a_row": info.failures if info else 0,
        "stale_pid": stale.pid if stale else None,
        "log": str(d.log_path(workspace)),
        **_progress(workspace),
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        line = f"daemon: {report['state']}"
        if info:
            line += f" (pid {info.pid}, up {_duration(report['uptime_s'])})"
        elif stale:
            line += f" (stale pid file: pid {stale.pid} is gone; `dte daemon start` is safe)"
        console.print(line, highlight=False)
        if report.get("cycle") is not None:
            console.print(
                f"cycle {report['cycle']}  stage {report['stage']}  layers {report['layers']}"
                f"  phase {report['phase'] or '-'}  ({report['cycle_status']})",
                highlight=False,
            )
        console.print(f"log: {report['log']}", highlight=False)
    sys.exit(0 if info else NOT_RUNNING_EXIT)


def _progress(workspace: Path) -> dict:
    """The newest cycle's number, stage, depth and running phase, read-only."""
    try:
        with Store.open(workspace, readonly=True) as store:
            rows = store.cycles()
    except StoreError:
        return {}
    if not rows:
        return {}
    last = rows[-1]
    phase = next((p for p in PHASES if last.get(f"phase_{p}") == "running"), None)
    return {
        "cycle": last["n"],
        "stage": last["stage"],
        "layers": last["layers"],
        "phase": phase,
        "cycle_status": last["status"],
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    return f"{days}d {h}h" if days else f"{h}h {m}m" if h else f"{m}m {s}s"


@daemon.command()
@workspace_option
@click.option("--lines", "-n", default=40, show_default=True, help="Lines to show.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines (Ctrl-C ends).")
def logs(workspace: Path, lines: int, follow: bool) -> None:
    """Show the daemon's log (across rotations); -f follows it."""
    path = d.log_path(workspace)
    numbered = [(int(p.suffix[1:]), p) for p in path.parent.glob(f"{path.name}.*")
                if p.suffix[1:].isdigit()]  # fmt: skip
    rotated = [p for _, p in sorted(numbered, reverse=True)]  # oldest first
    tail: deque[str] = deque(maxlen=lines)
    for file in [*rotated, path]:
        if file.exists():
            with open(file, encoding="utf-8", errors="replace") as handle:
                tail.extend(handle)
    if not tail and not follow:
        console.print(f"no log yet at {path}")
        return
    click.echo("".join(tail), nl=False)
    if follow:
        with contextlib.suppress(KeyboardInterrupt):
            _follow(path)


def _follow(path: Path) -> None:
    """Print lines appended to ``path``, reopening it when it is rotated."""
    at_end = True  # the first time, only what is new; after a rotation, the new file whole
    while True:
        while not path.exists():
            time.sleep(0.3)
        with open(path, encoding="utf-8", errors="replace") as handle:
            if at_end:
                handle.seek(0, os.SEEK_END)
            at_end = False
            while True:
                if line := handle.readline():
                    click.echo(line, nl=False)
                    continue
                if _rotated(path, handle.fileno()):
                    click.echo(handle.read(), nl=False)
                    break
                time.sleep(0.3)


def _rotated(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino != os.fstat(fd).st_ino
    except FileNotFoundError:
        return True


def _control(workspace: Path, command: str, done: str) -> None:
    from dte_aar.tui.queries import request_control

    if d.running(workspace) is None:
        raise UserError(f"{workspace}: no daemon is running (start one with `dte daemon start`)")
    row_id = request_control(workspace, command)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with Store.open(workspace, readonly=True) as store:
            row = store.db["control"].get(row_id)
        if row["handled_at"]:
            console.print(done)
            return
        time.sleep(0.2)
    console.print(f"{command} requested; the daemon has not picked it up yet")


@daemon.command()
@workspace_option
def pause(workspace: Path) -> None:
    """Hold the daemon at the next training step or candidate (the model stays loaded)."""
    _control(workspace, "pause", "paused (after the step under way); `dte daemon resume` goes on")


@daemon.command()
@workspace_option
def resume(workspace: Path) -> None:
    """Let a paused daemon go on."""
    _control(workspace, "resume", "resumed")
