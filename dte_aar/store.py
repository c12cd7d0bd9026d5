"""SQLite access for one workspace (``<workspace>/dte.db``).

The bootstrap loop is the single writer; the CLI, TUI and reports open the file read-only.
Every connection runs in WAL mode with a busy timeout so readers never block the writer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from dte_aar.hookspecs import CheckpointInfo, Sample
from dte_aar.migrations import migrate

DB_FILE = "dte.db"
BUSY_TIMEOUT_MS = 10_000
PHASES = ("generate", "curate", "train", "evaluate", "checkpoint", "commit")


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def text_hash(text: str) -> str:
    """Exact-duplicate key: whitespace-normalised, case-folded text."""
    normal = " ".join(text.split()).casefold()
    return hashlib.sha256(normal.encode("utf-8")).hexdigest()


class StoreError(Exception):
    pass


class Store:
    def __init__(self, db: sqlite_utils.Database, path: Path, readonly: bool) -> None:
        self.db = db
        self.path = path
        self.readonly = readonly

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, workspace: Path, readonly: bool = False) -> Store:
        path = Path(workspace) / DB_FILE
        if readonly:
            if not path.exists():
                raise StoreError(f"{path}: no database yet (run `dte bootstrap` first)")
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db = sqlite_utils.Database(conn)
        if not readonly:
            db.enable_wal()
            # Under WAL, NORMAL survives any process crash; only a power cut can lose the
            # last commits, never corrupt the file. It makes per-row commits cheap.
            conn.execute("PRAGMA synchronous = NORMAL")
            migrate(db)
        return cls(db, path, readonly)

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ runs
    def start_run(self, arena: str, preset: str, settings: dict[str, Any]) -> int:
        table = self.db["runs"]
        table.insert(
            {
                "started_at": now(),
                "status": "running",
                "arena": arena,
                "preset": preset,
                "settings": json.dumps(settings, default=str),
            }
        )
        return int(table.last_pk)

    def end_run(self, run_id: int, status: str) -> None:
        self.db["runs"].update(run_id, {"status": status, "ended_at": now()})

    # ------------------------------------------------------------------ cycles
    def cycle(self, n: int) -> dict[str, Any] | None:
        rows = list(self.db["cycles"].rows_where("n = ?", [n]))
        return rows[0] if rows else None

    def cycles(self) -> list[dict[str, Any]]:
        return list(self.db["cycles"].rows_where(order_by="n"))

    def last_cycle(self) -> dict[str, Any] | None:
        rows = list(self.db["cycles"].rows_where(order_by="n desc", limit=1))
        return rows[0] if rows else None

    def open_cycle(self, n: int, run_id: int, stage: int, layers: int) -> dict[str, Any]:
        """Create cycle ``n`` or adopt it for this run when resuming."""
        if self.cycle(n) is None:
            self.db["cycles"].insert(
                {
                    "n": n,
                    "run_id": run_id,
                    "stage": stage,
                    "layers": layers,
                    "status": "running",
                    "started_at": now(),
                }
            )
        else:
            self.db["cycles"].update(n, {"run_id": run_id, "status": "running", "error": None})
        row = self.cycle(n)
        assert row is not None
        return row

    def set_phase(self, n: int, phase: str, status: str | None, error: str | None = None) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        values: dict[str, Any] = {f"phase_{phase}": status}
        if error is not None:
            values["error"] = error
        self.db["cycles"].update(n, values)

    def update_cycle(self, n: int, **values: Any) -> None:
        self.db["cycles"].update(n, values)

    # ------------------------------------------------------------------ samples
    def add_sample(self, **values: Any) -> int | None:
        """Insert a sample; return its id, or None if its unique key already exists."""
        values.setdefault("created_at", now())
        values.setdefault("text_hash", text_hash(values["text"]))
        values.setdefault("split", "train")
        values.setdefault("status", "pending")
        table = self.db["samples"]
        try:
            with self.db.conn:
                table.insert(values)
        except sqlite3.IntegrityError:
            return None
        return int(table.last_pk)

    def add_samples(self, rows: Iterable[dict[str, Any]]) -> int:
        """Insert many (seed, imports) in one transaction, ignoring existing keys."""
        prepared = []
        for values in rows:
            values = dict(values)
            values.setdefault("created_at", now())
            values.setdefault("text_hash", text_hash(values["text"]))
            values.setdefault("split", "train")
            values.setdefault("status", "accepted")
            prepared.append(values)
        before = self.db["samples"].count
        with self.db.conn:
            self.db["samples"].insert_all(prepared, ignore=True)
        return self.db["samples"].count - before

    def filled_slots(self, cycle: int, generator: str) -> set[int]:
        rows = self.db.execute(
            "select slot from samples where cycle = ? and generator = ?", [cycle, generator]
        ).fetchall()
        return {r[0] for r in rows}

    def samples(self, where: str, params: list[Any]) -> list[Sample]:
        rows = self.db["samples"].rows_where(where, params, order_by="id")
        return [
            Sample(
                id=r["id"],
                text=r["text"],
                source=r["source"],
                generator=r["generator"],
                prompt=r["prompt"],
                text_hash=r["text_hash"],
                finish_reason=r.get("finish_reason"),
            )
            for r in rows
        ]

    def set_sample_status(self, sample_id: int, status: str) -> None:
        self.db["samples"].update(sample_id, {"status": status})

    def hash_kept_before(self, digest: str, sample_id: int) -> bool:
        """True when an earlier sample with this text is accepted or still pending."""
        row = self.db.execute(
            "select 1 from samples where text_hash = ? and id < ? "
            "and status in ('accepted', 'pending') limit 1",
            [digest, sample_id],
        ).fetchone()
        return row is not None

    def hash_exists(self, digest: str) -> bool:
        row = self.db.execute(
            "select 1 from samples where text_hash = ? and status != 'rejected' limit 1", [digest]
        ).fetchone()
        return row is not None

    def corpus(self, split: str) -> Iterator[tuple[int, str]]:
        """Accepted samples of one split, oldest first: the trainer's view of the corpus."""
        cursor = self.db.execute(
            "select id, text from samples where status = 'accepted' and split = ? order by id",
            [split],
        )
        yield from cursor

    def corpus_counts(self) -> dict[str, int]:
        """Counts by source/status, plus totals, for summaries and the mix metric."""
        counts: dict[str, int] = {}
        for source, status, count in self.db.execute(
            "select source, status, count(*) from samples group by source, status"
        ):
            counts[f"{source}:{status}"] = count
        return counts

    # ------------------------------------------------------------------ verdicts
    def judged(self, curator: str, sample_ids: list[int]) -> set[int]:
        if not sample_ids:
            return set()
        marks = ",".join("?" * len(sample_ids))
        rows = self.db.execute(
            f"select sample_id from verdicts where curator = ? and sample_id in ({marks})",
            [curator, *sample_ids],
        )
        return {r[0] for r in rows}

    def add_verdict(
        self, sample_id: int, cycle: int, curator: str, keep: bool, score: float, reason: str
    ) -> None:
        with self.db.conn:
            self.db["verdicts"].insert(
                {
                    "sample_id": sample_id,
                    "cycle": cycle,
                    "curator": curator,
                    "keep": int(bool(keep)),
                    "score": float(score),
                    "reason": reason,
                    "created_at": now(),
                },
                replace=False,
                ignore=True,
            )

    def add_verdicts(self, rows: Iterable[dict[str, Any]]) -> None:
        """Insert many verdicts (sample_id, cycle, curator, keep, score, reason) in one
        transaction; one already stored for a (sample, curator) is kept."""
        stamp = now()
        prepared = [
            {**row, "keep": int(bool(row["keep"])), "score": float(row["score"]),
             "created_at": stamp}
            for row in rows
        ]  # fmt: skip
        if prepared:
            with self.db.conn:
                self.db["verdicts"].insert_all(prepared, ignore=True)

    @contextmanager
    def verdict_batches(
        self, max_rows: int = 256, max_seconds: float = 1.0
    ) -> Iterator[Callable[[dict[str, Any]], None]]:
        """A function that queues one verdict row; rows are written a batch per transaction
        (every ``max_rows`` or ``max_seconds``) and the rest when the block ends, however it
        ends. A kill loses at most the last batch, whose samples are judged again on resume."""
        queue: list[dict[str, Any]] = []
        last = time.monotonic()

        def add(row: dict[str, Any]) -> None:
            nonlocal last
            queue.append(row)
            if len(queue) >= max_rows or time.monotonic() - last >= max_seconds:
                self.add_verdicts(queue)
                queue.clear()
                last = time.monotonic()

        try:
            yield add
        finally:
            self.add_verdicts(queue)

    def verdicts_for(self, sample_id: int) -> list[dict[str, Any]]:
        return list(self.db["verdicts"].rows_where("sample_id = ?", [sample_id]))

    # ------------------------------------------------------------------ metrics
    def log_metric(self, **values: Any) -> None:
        values.setdefault("created_at", now())
        self.db["metrics"].insert(values)

    def clear_metrics(
        self, cycle: int, phase: str, from_step: int | None = 0, summary: bool = True
    ) -> None:
        """Delete a phase's metrics before it runs again: its per-step rows from ``from_step``
        on (None: none of them) and, with ``summary``, its rows without a step."""
        kinds, params = [], [cycle, phase]
        if from_step is not None:
            kinds.append("step >= ?")
            params.append(from_step)
        if summary:
            kinds.append("step is null")
        if kinds:
            with self.db.conn:
                self.db.execute(
                    f"delete from metrics where cycle = ? and phase = ? and ({' or '.join(kinds)})",
                    params,
                )

    def metric_by_cycle(self, name: str) -> dict[int, float]:
        """The last value of ``name`` logged in each cycle."""
        rows = self.db.execute(
            "select cycle, value from metrics where name = ? order by id", [name]
        ).fetchall()
        return {cycle: value for cycle, value in rows}

    # ------------------------------------------------------------------ checkpoints
    def register_checkpoint(
        self, cycle: int, path: Path, sha256: str, layers: int, params: int
    ) -> None:
        with self.db.conn:
            self.db.execute("delete from checkpoints where cycle = ?", [cycle])
            self.db["checkpoints"].insert(
                {
                    "cycle": cycle,
                    "path": str(path),
                    "sha256": sha256,
                    "layers": layers,
                    "params": params,
                    "status": "good",
                    "created_at": now(),
                }
            )

    def good_checkpoints(self) -> list[dict[str, Any]]:
        return list(self.db["checkpoints"].rows_where("status = 'good'", order_by="cycle"))

    def mark_checkpoint_pruned(self, cycle: int) -> None:
        with self.db.conn:
            self.db.execute("update checkpoints set status = 'pruned' where cycle = ?", [cycle])

    def mark_checkpoint_bad(self, sha256: str) -> None:
        with self.db.conn:
            self.db.execute("update checkpoints set status = 'bad' where sha256 = ?", [sha256])

    def latest_checkpoint(self) -> CheckpointInfo | None:
        """The newest checkpoint registered as good, from a committed cycle."""
        row = self.db.execute(
            "select c.path, c.sha256, c.layers, c.cycle from checkpoints c "
            "join cycles y on y.n = c.cycle "
            "where c.status = 'good' and y.phase_checkpoint = 'done' "
            "order by c.cycle desc limit 1"
        ).fetchone()
        if row is None:
            return None
        return CheckpointInfo(path=Path(row[0]), sha256=row[1], layers=row[2], cycle=row[3])

    # ------------------------------------------------------------------ events & control
    def add_event(
        self,
        kind: str,
        run_id: int | None = None,
        cycle: int | None = None,
        phase: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        with self.db.conn:
            self.db["events"].insert(
                {
                    "ts": now(),
                    "run_id": run_id,
                    "cycle": cycle,
                    "phase": phase,
                    "kind": kind,
                    "data": json.dumps(data or {}, default=str),
                }
            )
