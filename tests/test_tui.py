"""`dte watch`: the reader, and the Textual app driven headless with Pilot.

The snapshot test compares the main screen with ``tests/snapshots/watch_main.svg``. After an
intended change to the look, regenerate it and review the SVG (open it in a browser)::

    UPDATE_SNAPSHOTS=1 pytest tests/test_tui.py -k snapshot
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dte_aar.daemon import WorkspaceLock
from dte_aar.tui import watch_command
from dte_aar.tui.app import WatchApp
from dte_aar.tui.demo import add_cycle, fill_store
from dte_aar.tui.queries import (
    Reader,
    SampleFilter,
    daemon_state,
    read_pid,
    request_control,
)
from dte_aar.tui.widgets import (
    ConfirmScreen,
    EventsLog,
    HelpScreen,
    LayerTree,
    SamplesBrowser,
    StatusHeader,
)

SNAPSHOT = Path(__file__).parent / "snapshots" / "watch_main.svg"
SIZE = (120, 40)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Four committed cycles, a finished run: everything on screen is deterministic."""
    return fill_store(tmp_path / "ws", cycles=4, steps=60, samples_per_cycle=12, seed_samples=20)


class RecordingApp(WatchApp):
    """Keeps every notification (a store error would show up as a warning)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.notes: list[tuple[str, str]] = []

    def notify(self, message, *args, severity="information", **kwargs) -> None:
        self.notes.append((str(message), severity))
        super().notify(message, *args, severity=severity, **kwargs)


def writer(workspace: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(workspace / "dte.db", check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def control_rows(workspace: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(workspace / "dte.db") as conn:
        return conn.execute("select command, handled_at from control order by id").fetchall()


def header_text(app: WatchApp) -> str:
    return app.query_one(StatusHeader).content.plain  # type: ignore[union-attr]


async def until(pilot, condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.05)


async def loaded(pilot) -> None:
    app = pilot.app
    await until(pilot, lambda: app.snapshot is not None and app.snapshot.complete)
    await pilot.pause()


# --------------------------------------------------------------------------- the reader
def test_snapshot_reads_the_store(store: Path) -> None:
    reader = Reader(store)
    first = reader.poll()
    assert first is not None and not first.complete  # cheap parts first
    snap = reader.poll()
    assert snap is not None and snap.complete
    h = snap.header
    assert (h.cycle, h.layers, h.trainable, h.frozen) == (4, 4, 1, 3)
    assert (h.stage, h.stage_name, h.run_status) == (2, "semantic", "done")
    assert h.tokens == 4 * 60 * 8 * 64
    assert h.elapsed() == 4 * 3600
    assert [(x.index, x.added_in, x.state) for x in snap.layers] == [
        (1, 1, "frozen"),
        (2, 2, "frozen"),
        (3, 3, "frozen"),
        (4, 4, "new"),
    ]
    assert [x for x, _ in snap.loss.growth] == [0, 60, 120, 180]
    assert len(snap.loss.x) <= 4 * 48 and snap.loss.x == tuple(sorted(snap.loss.x))
    assert [n for n, _ in snap.metric("heldout_ppl")] == [1, 2, 3, 4]
    with sqlite3.connect(store / "dte.db") as conn:
        kept, rejected = conn.execute(
            "select sum(keep), sum(1 - keep) from verdicts where curator = 'dedup'"
        ).fetchone()
        accepted = conn.execute("select count(*) from samples where status = 'accepted'")
        accepted = accepted.fetchone()[0]
    tallies = [t for t in snap.curators if t.curator == "dedup"]
    assert (sum(t.kept for t in tallies), sum(t.rejected for t in tallies)) == (kept, rejected)
    assert snap.corpus.real + snap.corpus.synthetic == accepted
    assert snap.curator_names == ("dedup", "quality")
    assert reader.poll() is None  # nothing changed: nothing read
    reader.close()


def test_incremental_polls_match_a_fresh_read(store: Path) -> None:
    reader = Reader(store)
    reader.poll(), reader.poll()
    conn = writer(store)
    with conn:
        add_cycle(conn, store, random.Random(1), 5, 60, 12)
    conn.execute("update samples set status = 'rejected' where cycle = 5 and slot = 0")
    conn.commit()
    conn.close()
    snap = reader.poll()
    fresh_reader = Reader(store)
    fresh_reader.poll()
    fresh = fresh_reader.poll()
    assert snap is not None and fresh is not None
    assert snap.header.cycle == 5 and snap.layers[-1].added_in == 5
    for part in ("cycles", "layers", "loss", "per_cycle", "curators", "corpus", "header"):
        assert getattr(snap, part) == getattr(fresh, part), part
    reader.close()
    fresh_reader.close()


def test_sample_filters(store: Path) -> None:
    reader = Reader(store)
    with sqlite3.connect(store / "dte.db") as conn:

        def count(sql: str) -> int:
            return conn.execute(sql).fetchone()[0]

        cases = {
            SampleFilter(): count("select count(*) from samples"),
            SampleFilter(cycle=2): count("select count(*) from samples where cycle = 2"),
            SampleFilter(generator="openai", keep=True): count(
                "select count(*) from samples where generator = 'openai' and status = 'accepted'"
            ),
            SampleFilter(generator="seed"): count(
                "select count(*) from samples where source = 'seed'"
            ),
            SampleFilter(curator="quality", keep=False): count(
                "select count(*) from verdicts where curator = 'quality' and keep = 0"
            ),
        }
    for flt, expected in cases.items():
        assert len(reader.samples(flt)) == expected, flt
    rejected = reader.samples(SampleFilter(curator="dedup", keep=False))[0]
    detail = reader.sample_detail(rejected.id)
    assert detail is not None
    assert {v.curator for v in detail.verdicts} == {"quality", "dedup"}
    assert any(v.reason == "near-duplicate" and not v.keep for v in detail.verdicts)
    reader.close()


def test_daemon_state(tmp_path: Path) -> None:
    assert daemon_state(None, False, None) == "not running"
    assert daemon_state(7, False, None) == "not running (stale pid 7)"
    assert daemon_state(7, True, None) == "running (pid 7)"
    assert daemon_state(7, True, ("pause", None)) == "pause requested (pid 7)"
    assert daemon_state(7, True, ("pause", "2025-01-01")) == "paused (pid 7)"
    assert daemon_state(7, True, ("resume", "2025-01-01")) == "running (pid 7)"
    assert daemon_state(7, True, ("stop", None)) == "stop requested (pid 7)"
    assert daemon_state(7, True, None, "retrying") == "retrying a failed cycle (pid 7)"
    (tmp_path / "daemon.pid").write_text("1234\n")
    assert read_pid(tmp_path) == 1234
    (tmp_path / "daemon.pid").write_text('{"pid": 99, "started": "x"}')
    assert read_pid(tmp_path) == 99
    (tmp_path / "daemon.pid").write_text("garbage")
    assert read_pid(tmp_path) is None
    # what `dte daemon` writes
    from dte_aar.daemon import DaemonInfo, write_info
    from dte_aar.tui.queries import read_pid_file

    write_info(tmp_path, DaemonInfo(pid=42, state="retrying", started_at="t", workspace="w"))
    assert read_pid_file(tmp_path) == (42, "retrying")


def test_request_control(store: Path) -> None:
    assert request_control(store, "pause") > 0
    assert control_rows(store) == [("pause", None)]
    with pytest.raises(ValueError, match="unknown control command"):
        request_control(store, "reboot")


def test_watch_command_without_a_store(tmp_path: Path) -> None:
    result = CliRunner().invoke(watch_command, [str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "no database yet" in result.output


# --------------------------------------------------------------------------- the app
def test_watch_follows_a_writer_without_locking(store: Path) -> None:
    """A writer adds three cycles (many small transactions) while the app polls fast."""
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        conn = writer(store)
        rng = random.Random(3)
        try:
            for n in (5, 6, 7):
                for i in range(20):  # small commits, as the training loop makes them
                    with conn:
                        conn.execute(
                            "insert into events (ts, run_id, cycle, phase, kind, data)"
                            " values ('2025-01-02T00:00:00', 1, ?, 'train', 'tick', ?)",
                            [n, f'{{"i": {i}}}'],
                        )
                    time.sleep(0.005)
                with conn:
                    add_cycle(conn, store, rng, n, 60, 12)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
        finally:
            conn.close()
            done.set()

    async def run() -> None:
        app = RecordingApp(store, interval=0.05)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            thread = threading.Thread(target=write)
            thread.start()
            await until(pilot, done.is_set, timeout=30)
            thread.join()
            await until(pilot, lambda: app.snapshot.header.cycle == 7)
            await pilot.pause(0.2)
            assert "cycle 7" in header_text(app)
            assert "layers 7" in header_text(app)
            tree = app.query_one(LayerTree)
            labels = [str(node.label) for node in tree.root.children[-1].children]
            assert labels and labels[0].startswith("L7") and "new" in labels[0]
            assert app.query_one(EventsLog).last_id > 0
            warnings = [m for m, severity in app.notes if severity != "information"]
            assert not warnings, warnings
            assert app.polls > 3

    asyncio.run(run())
    assert not errors, errors


def test_keys_send_control_rows(store: Path) -> None:
    async def run() -> None:
        app = WatchApp(store, interval=0.05)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            await pilot.press("p")
            await app.workers.wait_for_complete()
            await pilot.press("r")
            await app.workers.wait_for_complete()
            await pilot.press("s")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("n")  # declined: nothing sent
            await app.workers.wait_for_complete()
            assert control_rows(store) == [("pause", None), ("resume", None)]
            await pilot.press("s", "y")
            await app.workers.wait_for_complete()
            assert control_rows(store)[-1] == ("stop", None)

    asyncio.run(run())
    assert [c for c, _ in control_rows(store)] == ["pause", "resume", "stop"]


def test_header_shows_the_daemon(store: Path) -> None:
    (store / "daemon.pid").write_text(str(os.getpid()))
    lock = WorkspaceLock(store)  # what a live daemon holds; the pid file alone is not enough
    assert lock.acquire()

    async def run() -> None:
        app = WatchApp(store, interval=0.05)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            assert f"daemon: running (pid {os.getpid()})" in header_text(app)
            await pilot.press("p")
            await until(pilot, lambda: "pause requested" in header_text(app))
            with sqlite3.connect(store / "dte.db") as conn:  # the daemon handles it
                conn.execute("update control set handled_at = '2025-01-02T00:00:00'")
            await until(pilot, lambda: "daemon: paused" in header_text(app))
            lock.release()  # the daemon died: its pid file is stale now
            await until(pilot, lambda: "daemon: not running (stale pid" in header_text(app))
            (store / "daemon.pid").unlink()
            await until(pilot, lambda: "daemon: not running" in header_text(app))

    asyncio.run(run())


def test_samples_browser_and_help(store: Path) -> None:
    async def run() -> None:
        app = WatchApp(store, interval=0.2)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            await pilot.press("2")
            browser = app.query_one(SamplesBrowser)
            table = browser.query_one("#samples-table")
            await until(pilot, lambda: table.row_count > 0)
            assert table.row_count == 20 + 4 * 12
            browser.query_one("#f-curator").value = "dedup"
            browser.query_one("#f-keep").value = False
            with sqlite3.connect(store / "dte.db") as conn:
                expected = conn.execute(
                    "select count(*) from verdicts where curator = 'dedup' and keep = 0"
                ).fetchone()[0]
            await until(pilot, lambda: table.row_count == expected)
            table.focus()
            await pilot.press("down", "up")
            detail = browser.query_one("#sample-detail")
            await until(pilot, lambda: "near-duplicate" in _plain(detail))
            assert "quality" in _plain(detail) and "rejected" in _plain(detail)
            await pilot.press("3")
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)

    asyncio.run(run())


def _plain(widget) -> str:
    from rich.console import Console

    console = Console(width=200, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(widget.content)
    return console.export_text()


def test_snapshot_main_screen(store: Path, tmp_path: Path) -> None:
    """The main screen's look, pixel for pixel (well, cell for cell) against the SVG."""

    async def run() -> str:
        app = WatchApp(store, interval=60)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            await pilot.pause(0.1)
            return app.export_screenshot(title="dte watch")

    svg = asyncio.run(run())
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(svg, encoding="utf-8")
    assert SNAPSHOT.exists(), "no snapshot yet: run with UPDATE_SNAPSHOTS=1"
    if svg != SNAPSHOT.read_text(encoding="utf-8"):
        actual = tmp_path / "watch_main.actual.svg"
        actual.write_text(svg, encoding="utf-8")
        pytest.fail(
            f"main screen differs from {SNAPSHOT}; see {actual}. If the change is intended: "
            "UPDATE_SNAPSHOTS=1 pytest tests/test_tui.py -k snapshot"
        )


def test_thin_keeps_the_shape() -> None:
    from dte_aar.tui.widgets import thin

    xs = tuple(float(i) for i in range(1000))
    ys = tuple(float(i % 10) for i in range(1000))
    tx, ty = thin(xs, ys, 100)
    assert len(tx) == len(ty) == 100
    assert tx[0] == 0 and tx[-1] == 990 and all(y == 4.5 for y in ty)
    assert thin(xs[:50], ys[:50], 100) == (list(xs[:50]), list(ys[:50]))
