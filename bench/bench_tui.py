"""`dte watch` on a big store: start-up to the first full paint, and refresh while a writer writes.

Builds a store with 1M metric rows and 100k samples (40 cycles of 5,000 steps x 5 per-step
metrics; 2,000 seed + 40 x 2,450 generated samples, two verdicts each; ~100k events) in a
temporary directory with ``executemany``, then measures:

* the reader alone: first (cheap) snapshot, the complete one, an idle poll, and polls after a
  training write, a phase change and a batch of verdicts;
* the app in this process (Textual headless, 160x48): construction to the first paint and to
  the first *full* paint (corpus counted), median of 3;
* a fresh interpreter: spawn to the full paint, imports included (what `dte watch` costs before
  the CLI's own start-up);
* refresh while a writer thread trains cycle 41 (small commits every 20 ms): poll time in the
  worker, snapshot-to-screen time on the UI thread, and the worst stall of a 20 ms UI timer.

Prints a table and exits 0::

    python bench/bench_tui.py           # 1M metric rows, 100k samples
    python bench/bench_tui.py --quick   # 100k metric rows, 10k samples
    python bench/bench_tui.py --indexes # with the indexes proposed for a migration
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZE = (160, 48)
#: Indexes proposed for a migration; ``--indexes`` adds them to the benchmark's store.
PROPOSED_INDEXES = (
    "create index if not exists idx_metrics_cycle_name_step on metrics (cycle, name, step, value)",
    "create index if not exists idx_verdicts_cycle_curator on verdicts (cycle, curator, keep)",
    "create index if not exists idx_samples_cycle_source"
    " on samples (cycle, source, generator, status, cost, tokens)",
)


def build(workspace: Path, quick: bool, indexes: bool) -> dict[str, float]:
    from dte_aar.tui.demo import fill_store

    cycles, steps, per_cycle, seed = (40, 500, 245, 200) if quick else (40, 5000, 2450, 2000)
    t0 = time.perf_counter()
    fill_store(workspace, cycles=cycles, steps=steps, samples_per_cycle=per_cycle,
               seed_samples=seed, running=False)  # fmt: skip
    seconds = time.perf_counter() - t0
    with sqlite3.connect(workspace / "dte.db") as conn:
        for ddl in PROPOSED_INDEXES if indexes else ():
            conn.execute(ddl)
        counts = {
            t: conn.execute(f"select count(*) from {t}").fetchone()[0]
            for t in ("metrics", "samples", "verdicts", "events")
        }
    return {"build_s": seconds, **counts}


# --------------------------------------------------------------------------- writer
class Trainer(threading.Thread):
    """Writes cycle ``n`` as the loop would: a cycle row, then per-step metrics in small
    commits, a phase change now and then; until stopped."""

    def __init__(self, workspace: Path, n: int, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.workspace, self.n, self.every = workspace, n, every
        self.stop = threading.Event()
        self.commits = 0
        self.errors: list[str] = []

    def run(self) -> None:
        conn = sqlite3.connect(self.workspace / "dte.db")
        conn.execute("PRAGMA busy_timeout = 10000")
        rng = random.Random(0)
        try:
            with conn:
                conn.execute(
                    "insert or replace into cycles (n, run_id, stage, layers, status,"
                    " phase_generate, phase_curate, phase_train, started_at) values"
                    " (?, 1, 5, ?, 'running', 'done', 'done', 'running', '2025-03-01T00:00:00')",
                    [self.n, self.n],
                )
            step = 0
            while not self.stop.is_set():
                rows = []
                for _ in range(10):
                    loss = 3 + rng.random()
                    for name in ("train_loss", "loss_ce", "loss_identity", "grad_norm", "lr"):
                        rows.append((self.n, step, name, loss))
                    step += 1
                with conn:
                    conn.executemany(
                        "insert into metrics (run_id, cycle, phase, stage, layers, step, name,"
                        " value, created_at) values (1, ?, 'train', 5, 41, ?, ?, ?, '')",
                        rows,
                    )
                self.commits += 1
                time.sleep(self.every)
        except sqlite3.Error as exc:
            self.errors.append(str(exc))
        finally:
            conn.close()


# --------------------------------------------------------------------------- reader
def bench_reader(workspace: Path) -> dict[str, float]:
    from dte_aar.tui.demo import add_cycle
    from dte_aar.tui.queries import Reader

    out: dict[str, float] = {}
    t0 = time.perf_counter()
    reader = Reader(workspace)
    reader.poll()
    out["reader_first_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    reader.poll()
    out["reader_complete_s"] = time.perf_counter() - t0
    out["reader_idle_s"] = _timed(reader.poll)

    conn = sqlite3.connect(workspace / "dte.db")
    conn.execute("PRAGMA busy_timeout = 10000")
    with conn:  # ten training steps of the running cycle
        conn.executemany(
            "insert into metrics (run_id, cycle, phase, stage, layers, step, name, value,"
            " created_at) values (1, 40, 'train', 5, 40, ?, 'train_loss', 3.0, '')",
            [(10_000 + i,) for i in range(50)],
        )
    out["reader_after_steps_s"] = _timed(reader.poll)
    with conn:
        conn.execute("update cycles set phase_commit = 'running' where n = 40")
    out["reader_after_phase_s"] = _timed(reader.poll)
    with conn:  # a whole new cycle: samples, verdicts, metrics, checkpoint
        add_cycle(conn, workspace, random.Random(5), 41, 200, 500)
    out["reader_after_new_cycle_s"] = _timed(reader.poll)
    with conn:  # undo, so the app benchmarks see the store as built
        for table, key in (("metrics", "cycle"), ("events", "cycle"), ("checkpoints", "cycle")):
            conn.execute(f"delete from {table} where {key} = 41")
        conn.execute("delete from verdicts where cycle = 41")
        conn.execute("delete from samples where cycle = 41")
        conn.execute("delete from cycles where n = 41")
        conn.execute("delete from metrics where cycle = 40 and step >= 10000")
        conn.execute("update cycles set phase_commit = 'done' where n = 40")
    conn.close()
    reader.close()
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- app
async def _startup(workspace: Path) -> tuple[float, float]:
    from dte_aar.tui.app import WatchApp

    t0 = time.perf_counter()
    app = WatchApp(workspace)
    async with app.run_test(size=SIZE) as pilot:
        while app.first_paint is None:
            await pilot.pause(0.005)
        await pilot.pause()
        first = time.perf_counter() - t0
        while app.complete_paint is None:
            await pilot.pause(0.005)
        await pilot.pause()
        full = time.perf_counter() - t0
    return first, full


def bench_startup(workspace: Path, runs: int = 3) -> dict[str, float]:
    results = [asyncio.run(_startup(workspace)) for _ in range(runs)]
    return {
        "app_first_paint_s": statistics.median(r[0] for r in results),
        "app_full_paint_s": statistics.median(r[1] for r in results),
    }


def bench_fresh_process(workspace: Path) -> dict[str, float]:
    spawned = time.time()
    run = subprocess.run(
        [sys.executable, __file__, "--child", str(workspace)],
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode != 0:
        print(run.stderr, file=sys.stderr)
        return {}
    child = json.loads(run.stdout.strip().splitlines()[-1])
    return {
        "process_imports_s": child["imported"] - spawned,
        "process_full_paint_s": child["full"] - spawned,
    }


def child(workspace: Path) -> None:
    """In a fresh interpreter: import, start the app, report epoch times as JSON."""
    from dte_aar.tui.app import WatchApp

    imported = time.time()

    async def go() -> float:
        app = WatchApp(workspace)
        async with app.run_test(size=SIZE) as pilot:
            while app.complete_paint is None:
                await pilot.pause(0.005)
            await pilot.pause()
            return time.time()

    full = asyncio.run(go())
    print(json.dumps({"imported": imported, "full": full}))


async def _refresh(workspace: Path, seconds: float) -> dict[str, float]:
    from dte_aar.tui.app import WatchApp

    polls: list[float] = []
    applies: list[float] = []

    class Timed(WatchApp):
        def _apply(self, snapshot) -> None:
            t0 = time.perf_counter()
            super()._apply(snapshot)
            applies.append(time.perf_counter() - t0)

    app = Timed(workspace, interval=1.0)
    async with app.run_test(size=SIZE) as pilot:
        while app.complete_paint is None:
            await pilot.pause(0.01)
        await pilot.pause()
        reader = app.reader
        assert reader is not None
        plain_poll = reader.poll

        def timed_poll(force: bool = False):
            t0 = time.perf_counter()
            try:
                return plain_poll(force=force)
            finally:
                polls.append(time.perf_counter() - t0)

        reader.poll = timed_poll  # type: ignore[method-assign]
        applies.clear()
        gaps: list[float] = []
        last = [time.perf_counter()]

        def beat() -> None:
            now = time.perf_counter()
            gaps.append(now - last[0])
            last[0] = now

        app.set_interval(0.02, beat)
        await pilot.pause(2.0)  # the baseline: no writer, nothing changes
        idle_gap = max(gaps) if gaps else float("nan")
        gaps.clear()
        writer = Trainer(workspace, 41)
        writer.start()
        await pilot.pause(seconds)
        writer.stop.set()
        writer.join()
        await pilot.pause(1.2)
        shown = app.snapshot.header.cycle if app.snapshot else None
    return {
        "refresh_polls": len(polls),
        "refresh_poll_median_s": statistics.median(polls) if polls else float("nan"),
        "refresh_poll_max_s": max(polls) if polls else float("nan"),
        "refresh_apply_median_s": statistics.median(applies) if applies else float("nan"),
        "refresh_apply_max_s": max(applies) if applies else float("nan"),
        "ui_timer_idle_gap_s": idle_gap,
        "ui_timer_worst_gap_s": max(gaps) if gaps else float("nan"),
        "writer_commits": writer.commits,
        "writer_errors": len(writer.errors),
        "shows_new_cycle": float(shown == 41),
    }


# --------------------------------------------------------------------------- main
ROWS = [
    # key, label, target
    ("build_s", "build the store", ""),
    ("metrics", "metric rows", ""),
    ("samples", "samples", ""),
    ("verdicts", "verdicts", ""),
    ("events", "events", ""),
    ("reader_first_s", "reader: first snapshot (no corpus counts)", ""),
    ("reader_complete_s", "reader: complete snapshot", ""),
    ("reader_idle_s", "reader: idle poll (nothing changed)", ""),
    ("reader_after_steps_s", "reader: poll after 50 training rows", ""),
    ("reader_after_phase_s", "reader: poll after a phase change", ""),
    ("reader_after_new_cycle_s", "reader: poll after a new cycle (500 samples)", ""),
    ("app_first_paint_s", "app: start -> first paint (median of 3)", ""),
    ("app_full_paint_s", "app: start -> first full paint (median of 3)", "< 2 s"),
    ("process_imports_s", "fresh process: spawn -> imports done", ""),
    ("process_full_paint_s", "fresh process: spawn -> first full paint", "< 2 s"),
    ("refresh_polls", "refresh: polls while the writer wrote", ""),
    ("refresh_poll_median_s", "refresh: poll in the worker, median", ""),
    ("refresh_poll_max_s", "refresh: poll in the worker, max", ""),
    ("refresh_apply_median_s", "refresh: snapshot -> widgets (UI thread), median", ""),
    ("refresh_apply_max_s", "refresh: snapshot -> widgets (UI thread), max", ""),
    ("ui_timer_idle_gap_s", "idle: worst gap of a 20 ms UI timer (no writer)", ""),
    ("ui_timer_worst_gap_s", "refresh: worst gap of a 20 ms UI timer", ""),
    ("writer_commits", "writer commits meanwhile", ""),
    ("writer_errors", "writer errors (database is locked...)", "0"),
    ("shows_new_cycle", "screen shows the writer's new cycle (1 = yes)", "1"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k metric rows, 10k samples")
    parser.add_argument("--seconds", type=float, default=5.0, help="refresh measurement length")
    parser.add_argument(
        "--indexes", action="store_true", help="add the indexes proposed for a migration"
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_tui_") as tmp:
        workspace = Path(tmp) / "ws"
        results.update(build(workspace, args.quick, args.indexes))
        results.update(bench_reader(workspace))
        results.update(bench_startup(workspace))
        results.update(bench_fresh_process(workspace))
        results.update(asyncio.run(_refresh(workspace, args.seconds)))
    width = max(len(label) for _, label, _ in ROWS)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    schema = "with the proposed indexes" if args.indexes else "schema as migrated"
    print(f"dte watch benchmark ({'quick' if args.quick else 'full'}, {schema}; {os.cpu_count()}"
          f" CPUs, load average {load:.1f}; python {sys.version.split()[0]})")  # fmt: skip
    print(f"{'measure':<{width}}  {'value':>12}  target")
    print(f"{'-' * width}  {'-' * 12}  ------")
    for key, label, target in ROWS:
        if key not in results:
            continue
        value = results[key]
        shown = f"{value:,.3f} s" if key.endswith("_s") else f"{value:,.0f}"
        print(f"{label:<{width}}  {shown:>12}  {target}")


if __name__ == "__main__":
    main()
