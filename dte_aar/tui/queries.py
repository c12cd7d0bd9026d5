"""Everything `dte watch` and `dte report` read from a workspace, and the one thing they write.

A :class:`Reader` holds one read-only connection (WAL, busy timeout, ``query_only``) and turns
the store into an immutable :class:`Snapshot`. ``poll()`` is cheap when nothing changed
(``PRAGMA data_version`` and a stat of the pid file) and incremental when something did: loss
curves are downsampled in SQL per cycle and cached once a cycle is done, verdict tallies and
events are read from the last id seen. The reader may be used from any one thread at a time.

:func:`request_control` is the only write: a row in ``control`` for the daemon to pick up.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dte_aar.daemon import lock_held, read_info
from dte_aar.store import BUSY_TIMEOUT_MS, DB_FILE, PHASES, StoreError

#: Corpus sources with no generator: the filter's "generator" names them instead.
SOURCES_WITHOUT_GENERATOR = ("seed", "import", "self")
COMMANDS = ("pause", "resume", "stop")
#: Per-cycle values the views show (train_loss is summarised from the per-step rows instead).
#: The stage milestone evaluators' numbers, each with a ``<name>_pass`` of 1.0 or 0.0.
MILESTONES = ("phrase_completion", "concept_accuracy", "persona_consistency", "self_knowledge")
CYCLE_METRICS = (
    "heldout_ppl",
    "identity_score",
    "probe_ppl",
    "corpus_real",
    "corpus_synthetic",
    "synthetic_share",
    "tokens",
    *(f"{m}{suffix}" for m in MILESTONES for suffix in ("", "_pass")),
)
LOSS_BUCKETS = 48  # points per cycle in the loss curve
EVENT_TAIL = 200  # events kept in a snapshot
QUIET_EVENTS = ("sample",)  # one per generated sample: counted in the corpus, not logged


# --------------------------------------------------------------------------- the snapshot
@dataclass(frozen=True)
class Header:
    run_id: int | None = None
    run_status: str = "-"
    arena: str = "-"
    preset: str = "-"
    started_at: str | None = None
    ended_at: str | None = None
    stage: int = 0
    stage_name: str = "-"
    layers: int = 0
    trainable: int = 0
    frozen: int = 0
    cycle: int | None = None
    cycle_status: str = "-"
    phase: str = "-"
    tokens: int = 0
    daemon: str = "not running"

    def elapsed(self, now: dt.datetime | None = None) -> float | None:
        """Seconds the run has lasted (to its end, or to ``now`` while it runs)."""
        start = parse_ts(self.started_at)
        if start is None:
            return None
        end = parse_ts(self.ended_at) or now or dt.datetime.now(dt.UTC)
        return max(0.0, (end - start).total_seconds())


@dataclass(frozen=True)
class CycleRow:
    n: int
    stage: int
    layers: int
    status: str
    phase: str
    started_at: str | None
    ended_at: str | None


@dataclass(frozen=True)
class Layer:
    index: int  # 1-based, bottom first
    added_in: int | None  # the cycle that grew it
    stage: int
    state: str  # new | trainable | frozen


@dataclass(frozen=True)
class LossCurve:
    """Train loss over all cycles: ``x`` is the global step, ``layers`` the depth it ran at."""

    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    layers: tuple[int, ...] = ()
    growth: tuple[tuple[float, int], ...] = ()  # (global step, layers after growing)


@dataclass(frozen=True)
class CuratorTally:
    cycle: int | None
    curator: str
    kept: int
    rejected: int


@dataclass(frozen=True)
class CorpusRow:
    cycle: int | None
    source: str
    generator: str | None
    status: str
    count: int
    cost: float
    tokens: int


@dataclass(frozen=True)
class Corpus:
    rows: tuple[CorpusRow, ...] = ()

    def count(self, source: str | None = None, status: str | None = None) -> int:
        return sum(
            r.count
            for r in self.rows
            if (source is None or r.source == source) and (status is None or r.status == status)
        )

    @property
    def real(self) -> int:
        return sum(r.count for r in self.rows if r.status == "accepted" and r.source != "generated")

    @property
    def synthetic(self) -> int:
        return self.count("generated", "accepted")

    @property
    def spend(self) -> float:
        return sum(r.cost for r in self.rows)

    @property
    def generators(self) -> tuple[str, ...]:
        return tuple(sorted({r.generator or r.source for r in self.rows}))


@dataclass(frozen=True)
class EventRow:
    id: int
    ts: str
    cycle: int | None
    phase: str | None
    kind: str
    data: str


@dataclass(frozen=True)
class Snapshot:
    header: Header = field(default_factory=Header)
    cycles: tuple[CycleRow, ...] = ()
    layers: tuple[Layer, ...] = ()
    loss: LossCurve = field(default_factory=LossCurve)
    per_cycle: tuple[tuple[str, tuple[tuple[int, float], ...]], ...] = ()
    curators: tuple[CuratorTally, ...] = ()
    corpus: Corpus = field(default_factory=Corpus)
    events: tuple[EventRow, ...] = ()  # oldest first, the last EVENT_TAIL
    stage_names: tuple[str, ...] = ()
    complete: bool = False  # False: corpus and curator counts not read yet
    version: int = 0  # bumped by the reader on every change

    def metric(self, name: str) -> tuple[tuple[int, float], ...]:
        return dict(self.per_cycle).get(name, ())

    @property
    def curator_names(self) -> tuple[str, ...]:
        return tuple(sorted({t.curator for t in self.curators}))


@dataclass(frozen=True)
class SampleFilter:
    cycle: int | None = None
    generator: str | None = None  # a generator's name, or "seed" / "import" / "self"
    keep: bool | None = None  # kept/rejected: by ``curator`` if set, else the sample's status
    curator: str | None = None


@dataclass(frozen=True)
class SampleRow:
    id: int
    cycle: int | None
    source: str
    generator: str | None
    status: str
    tokens: int | None
    cost: float | None
    text: str


@dataclass(frozen=True)
class Verdict:
    curator: str
    keep: bool
    score: float | None
    reason: str


@dataclass(frozen=True)
class SampleDetail:
    sample: SampleRow
    prompt: str | None
    model: str | None
    verdicts: tuple[Verdict, ...]


# --------------------------------------------------------------------------- connections
def db_path(workspace: Path) -> Path:
    return Path(workspace) / DB_FILE


def connect_readonly(workspace: Path) -> sqlite3.Connection:
    """A read-only connection usable from a worker thread (one thread at a time)."""
    path = db_path(workspace)
    if not path.exists():
        raise StoreError(f"{path}: no database yet (run `dte bootstrap` first)")
    conn = sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA query_only = 1")
    return conn


def request_control(workspace: Path, command: str) -> int:
    """Ask the daemon to pause, resume or stop: one ``control`` row; return its id.

    The connection is opened read-write for this one insert only (WAL, busy timeout), so a
    reader such as `dte watch` never holds a write lock on the store.
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown control command {command!r} (expected one of {COMMANDS})")
    path = db_path(workspace)
    if not path.exists():
        raise StoreError(f"{path}: no database yet (run `dte bootstrap` first)")
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        with conn:
            cursor = conn.execute(
                "insert into control (ts, command, handled_at) values (?, ?, NULL)",
                [_now_iso(), command],
            )
        return int(cursor.lastrowid or 0)
    finally:
        conn.close()


def read_pid(workspace: Path) -> int | None:
    """The daemon's pid from ``<workspace>/daemon.pid`` (a bare number or JSON with "pid")."""
    return read_pid_file(workspace)[0]


def read_pid_file(workspace: Path) -> tuple[int | None, str | None]:
    """The daemon's pid and its own word for its state ("running", "paused", "retrying"...)
    from ``<workspace>/daemon.pid`` (see :func:`dte_aar.daemon.read_info`)."""
    info = read_info(workspace)
    return (info.pid, info.state) if info else (None, None)


def daemon_state(
    pid: int | None,
    alive: bool,
    control: tuple[str, str | None] | None,
    reported: str | None = None,
) -> str:
    """One phrase for the header from the pid file (pid and the daemon's reported state) and
    the latest control row."""
    command, handled = control if control else (None, None)
    if pid is None or not alive:
        base = "not running" if pid is None else f"not running (stale pid {pid})"
        if command and not handled and command != "stop":
            return f"{base}, {command} queued"
        return base
    where = f"pid {pid}"
    if reported == "retrying":
        return f"retrying a failed cycle ({where})"
    if command == "pause":
        return f"paused ({where})" if handled else f"pause requested ({where})"
    if command and not handled:
        return f"{command} requested ({where})"
    return f"running ({where})"


# --------------------------------------------------------------------------- the reader
class Reader:
    """Reads snapshots of one workspace; keeps the caches that make polling cheap."""

    def __init__(self, workspace: Path, loss_buckets: int = LOSS_BUCKETS) -> None:
        self.workspace = Path(workspace)
        self.conn = connect_readonly(self.workspace)
        self.lock = threading.Lock()
        self.loss_buckets = loss_buckets
        self._stage_names: tuple[str, ...] | None = None
        self._data_version: int | None = None
        self._pid_key: Any = None
        self._marks: dict[str, Any] = {}
        self._loss_done: dict[int, tuple[int, list[tuple[int, float]]]] = {}
        self._corpus_cache: list[CorpusRow] = []
        self._corpus_upto = 0  # cycles 1..upto are done and their counts cached
        self._tally: dict[tuple[int | None, str], list[int]] = {}
        self._tally_max = 0
        self._events: list[EventRow] = []
        self._events_max = 0
        self._sidecar: tuple[str, list[bool] | None] = ("", None)
        self._snapshot = Snapshot()

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    # ------------------------------------------------------------------ polling
    def poll(self, force: bool = False) -> Snapshot | None:
        """A new snapshot if anything changed since the last call (always the first time).

        The first call returns quickly with ``complete=False`` (no corpus counts yet: on a big
        store they need a full scan); call again at once for the complete one.
        """
        with self.lock:
            pid, reported = read_pid_file(self.workspace)
            pid_key = (pid, lock_held(self.workspace), reported)  # the lock decides
            version = self.conn.execute("PRAGMA data_version").fetchone()[0]
            unchanged = version == self._data_version and pid_key == self._pid_key
            if unchanged and not force and self._snapshot.complete:
                return None
            self.conn.execute("BEGIN")  # one consistent view for every query below
            try:
                snapshot = self._read(pid_key)
            finally:
                self.conn.execute("COMMIT")
            self._snapshot = snapshot
            self._data_version, self._pid_key = version, pid_key  # only once read in full
            return snapshot

    def _read(self, pid_key: tuple[int | None, bool, str | None]) -> Snapshot:
        q = self.conn.execute
        marks = dict(
            zip(
                ("metrics", "samples", "verdicts", "events", "checkpoints", "control", "runs"),
                q(
                    "select (select max(id) from metrics), (select max(id) from samples),"
                    " (select max(id) from verdicts), (select max(id) from events),"
                    " (select max(id) from checkpoints), (select max(id) from control),"
                    " (select max(id) from runs)"
                ).fetchone(),
                strict=True,
            )
        )
        cycles = tuple(
            CycleRow(r[0], r[1] or 1, r[2] or 0, r[3] or "-", _phase(r), r[10], r[11])
            for r in q(
                "select n, stage, layers, status, phase_generate, phase_curate, phase_train,"
                " phase_evaluate, phase_checkpoint, phase_commit, started_at, ended_at"
                " from cycles order by n"
            )
        )
        old, snap = self._marks, self._snapshot
        first = not old
        changed = {k for k in marks if marks[k] != old.get(k)}
        cycles_changed = cycles != snap.cycles
        if self._stage_names is None:
            self._stage_names = stage_names(self.workspace)

        loss, per_cycle = snap.loss, snap.per_cycle
        if first or "metrics" in changed or cycles_changed:
            loss = self._loss_curve(cycles)
            per_cycle = self._per_cycle(cycles)
        corpus, curators = snap.corpus, snap.curators
        complete = not first  # the first snapshot skips the corpus scans
        if complete and (not snap.complete or changed & {"samples", "verdicts"} or cycles_changed):
            corpus = self._corpus(cycles)
            curators = self._curator_tallies()
        events = snap.events
        if first or "events" in changed:
            events = self._new_events()
        layers = layer_stack(cycles, self._frozen_mask())
        header = self._header(cycles, layers, per_cycle, pid_key)
        self._marks = marks
        return Snapshot(
            header=header,
            cycles=cycles,
            layers=layers,
            loss=loss,
            per_cycle=per_cycle,
            curators=curators,
            corpus=corpus,
            events=events,
            stage_names=self._stage_names,
            complete=complete,
            version=snap.version + 1,
        )

    # ------------------------------------------------------------------ pieces
    def _loss_curve(self, cycles: tuple[CycleRow, ...]) -> LossCurve:
        """Downsampled in SQL, one cycle at a time (metrics(cycle, name) index); cycles that
        are done are read once and cached."""
        xs: list[float] = []
        ys: list[float] = []
        depth: list[int] = []
        growth: list[tuple[float, int]] = []
        offset, prev_layers = 0, 0
        for c in cycles:
            cached = self._loss_done.get(c.n)
            if cached is None:
                span, points = self._cycle_loss(c.n)
                if c.status == "done":
                    self._loss_done[c.n] = (span, points)
            else:
                span, points = cached
            if c.layers > prev_layers:
                growth.append((float(offset), c.layers))
            prev_layers = max(prev_layers, c.layers)
            for step, value in points:
                xs.append(float(offset + step))
                ys.append(value)
                depth.append(c.layers)
            offset += span
        return LossCurve(tuple(xs), tuple(ys), tuple(depth), tuple(growth))

    def _cycle_loss(self, cycle: int) -> tuple[int, list[tuple[int, float]]]:
        """(steps spanned, [(step, mean loss)]) with at most ``loss_buckets`` points."""
        rows = self.conn.execute(
            "with r as materialized (select step, value from metrics"
            "  where cycle = ? and name = 'train_loss' and step is not null),"
            " b as (select min(step) as lo, max(step) - min(step) + 1 as span from r)"
            " select min(r.step), avg(r.value), b.span from r, b"
            " group by (r.step - b.lo) * ? / b.span order by 1",
            [cycle, self.loss_buckets],
        ).fetchall()
        if not rows:
            return 0, []
        span = int(rows[0][2])
        lo = rows[0][0]
        return lo + span, [(int(s), float(v)) for s, v, _ in rows if _finite(v)]

    def _per_cycle(self, cycles: tuple[CycleRow, ...]) -> tuple:
        """The last value of each of CYCLE_METRICS per cycle (index seeks, no scan)."""
        if not cycles:
            return ()
        marks = ",".join("?" * len(CYCLE_METRICS))
        rows = self.conn.execute(
            f"select name, cycle, value from metrics where cycle in (select n from cycles)"
            f" and name in ({marks}) and step is null order by id",
            list(CYCLE_METRICS),
        )
        values: dict[str, dict[int, float]] = {}
        for name, cycle, value in rows:
            if value is not None:
                values.setdefault(name, {})[cycle] = float(value)
        return tuple(
            (name, tuple(sorted(values[name].items()))) for name in CYCLE_METRICS if name in values
        )

    def _corpus(self, cycles: tuple[CycleRow, ...]) -> Corpus:
        """Counts, cost and tokens by (cycle, source, generator, status). Cycles that are done
        (all of them up to ``_corpus_upto``) keep their counts; the rest are re-counted."""
        upto = self._corpus_upto
        part = (
            "select cycle, source, generator, status, count(*), coalesce(sum(cost), 0),"
            " coalesce(sum(tokens), 0) from samples where {} group by cycle, source, generator,"
            " status"
        )
        ranges = ("cycle > ?", "cycle is null", "cycle <= 0")  # each one index range
        sql = " union all ".join(part.format(r) for r in ranges)
        rows = [CorpusRow(*r) for r in self.conn.execute(sql, [upto])]
        for c in cycles:  # extend the cached prefix over cycles now done
            if c.n <= upto:
                continue
            if c.status != "done" or c.n < 1:
                break
            upto = c.n
        self._corpus_cache += [r for r in rows if r.cycle is not None and 0 < r.cycle <= upto]
        self._corpus_upto = upto
        fresh = [r for r in rows if not (r.cycle is not None and 0 < r.cycle <= upto)]
        everything = sorted(
            self._corpus_cache + fresh,
            key=lambda r: (
                r.cycle is not None,
                r.cycle or 0,
                r.source,
                r.generator or "",
                r.status,
            ),
        )
        return Corpus(tuple(everything))

    def _curator_tallies(self) -> tuple[CuratorTally, ...]:
        """Kept/rejected per (cycle, curator), read from the last verdict id seen on."""
        for cycle, curator, kept, total, top in self.conn.execute(
            "select cycle, curator, sum(keep), count(*), max(id) from verdicts"
            " where id > ? group by cycle, curator",
            [self._tally_max],
        ):
            tally = self._tally.setdefault((cycle, curator), [0, 0])
            tally[0] += kept or 0
            tally[1] += total - (kept or 0)
            self._tally_max = max(self._tally_max, top)
        return tuple(
            CuratorTally(cycle, curator, kept, rejected)
            for (cycle, curator), (kept, rejected) in sorted(
                self._tally.items(), key=lambda kv: (kv[0][0] is None, kv[0][0] or 0, kv[0][1])
            )
        )

    def _new_events(self) -> tuple[EventRow, ...]:
        quiet = ",".join("?" * len(QUIET_EVENTS))
        rows = self.conn.execute(
            f"select id, ts, cycle, phase, kind, data from events where id > ?"
            f" and kind not in ({quiet}) order by id desc limit ?",
            [self._events_max, *QUIET_EVENTS, EVENT_TAIL],
        ).fetchall()
        fresh = [EventRow(*r) for r in reversed(rows)]
        if fresh:
            self._events_max = fresh[-1].id
        self._events = (self._events + fresh)[-EVENT_TAIL:]
        top = self.conn.execute("select max(id) from events").fetchone()[0]
        self._events_max = max(self._events_max, top or 0)
        return tuple(self._events)

    def _frozen_mask(self) -> list[bool] | None:
        """The frozen mask from the newest good checkpoint's sidecar (read when it changes)."""
        row = self.conn.execute(
            "select path from checkpoints where status = 'good' order by cycle desc, id desc"
            " limit 1"
        ).fetchone()
        path = row[0] if row else ""
        if path != self._sidecar[0]:
            self._sidecar = (path, read_frozen_mask(self.workspace, path) if path else None)
        return self._sidecar[1]

    def _header(
        self,
        cycles: tuple[CycleRow, ...],
        layers: tuple[Layer, ...],
        per_cycle: tuple,
        pid_key: tuple[int | None, bool, str | None],
    ) -> Header:
        q = self.conn.execute
        run = q(
            "select id, status, arena, preset, started_at, ended_at from runs"
            " order by id desc limit 1"
        ).fetchone()
        control = q("select command, handled_at from control order by id desc limit 1").fetchone()
        last = cycles[-1] if cycles else None
        names = self._stage_names or ()
        stage = last.stage if last else 0
        tokens = sum(v for _, v in dict(per_cycle).get("tokens", ()))
        frozen = sum(1 for layer in layers if layer.state == "frozen")
        return Header(
            run_id=run[0] if run else None,
            run_status=(run[1] or "-") if run else "-",
            arena=(run[2] or "-") if run else "-",
            preset=(run[3] or "-") if run else "-",
            started_at=run[4] if run else None,
            ended_at=run[5] if run else None,
            stage=stage,
            stage_name=names[stage - 1] if 0 < stage <= len(names) else "-",
            layers=len(layers),
            trainable=len(layers) - frozen,
            frozen=frozen,
            cycle=last.n if last else None,
            cycle_status=last.status if last else "-",
            phase=last.phase if last else "-",
            tokens=int(tokens),
            daemon=daemon_state(
                pid_key[0], pid_key[1], tuple(control) if control else None, pid_key[2]
            ),
        )

    # ------------------------------------------------------------------ samples browser
    def samples(self, flt: SampleFilter, limit: int = 200) -> list[SampleRow]:
        """The newest samples matching ``flt`` (text cut to a preview)."""
        where, params = [], []
        if flt.cycle is not None:
            where.append("s.cycle = ?")
            params.append(flt.cycle)
        if flt.generator in SOURCES_WITHOUT_GENERATOR:
            where.append("s.source = ?")
            params.append(flt.generator)
        elif flt.generator:
            where.append("s.generator = ?")
            params.append(flt.generator)
        if flt.curator:
            clause = "exists (select 1 from verdicts v where v.sample_id = s.id and v.curator = ?"
            params.append(flt.curator)
            if flt.keep is not None:
                clause += " and v.keep = ?"
                params.append(int(flt.keep))
            where.append(clause + ")")
        elif flt.keep is not None:
            where.append("s.status = ?")
            params.append("accepted" if flt.keep else "rejected")
        sql = (
            "select s.id, s.cycle, s.source, s.generator, s.status, s.tokens, s.cost,"
            " substr(s.text, 1, 200) from samples s"
            + (" where " + " and ".join(where) if where else "")
            + " order by s.id desc limit ?"
        )
        with self.lock:
            rows = self.conn.execute(sql, [*params, limit]).fetchall()
        return [SampleRow(*r) for r in rows]

    def sample_detail(self, sample_id: int) -> SampleDetail | None:
        with self.lock:
            row = self.conn.execute(
                "select id, cycle, source, generator, status, tokens, cost, text, prompt, model"
                " from samples where id = ?",
                [sample_id],
            ).fetchone()
            if row is None:
                return None
            verdicts = self.conn.execute(
                "select curator, keep, score, reason from verdicts where sample_id = ? order by id",
                [sample_id],
            ).fetchall()
        return SampleDetail(
            sample=SampleRow(*row[:8]),
            prompt=row[8],
            model=row[9],
            verdicts=tuple(Verdict(c, bool(k), s, r or "") for c, k, s, r in verdicts),
        )


# --------------------------------------------------------------------------- helpers
def layer_stack(cycles: tuple[CycleRow, ...], mask: list[bool] | None) -> tuple[Layer, ...]:
    """Each layer with the cycle that grew it; frozen/trainable from the newest checkpoint's
    mask; layers the newest cycle added (or that no checkpoint covers yet) are "new"."""
    added: list[tuple[int, int]] = []  # (cycle, stage) per layer, bottom first
    for c in cycles:
        while len(added) < c.layers:
            added.append((c.n, c.stage))
    last = cycles[-1].n if cycles else None
    stack = []
    for i, (cycle, stage) in enumerate(added):
        if mask is not None and i < len(mask):
            state = "frozen" if mask[i] else "new" if cycle == last else "trainable"
        else:
            state = "new" if cycle == last else "trainable"
        stack.append(Layer(i + 1, cycle, stage, state))
    return tuple(stack)


def read_frozen_mask(workspace: Path, checkpoint: str) -> list[bool] | None:
    """``frozen`` (or ``frozen_mask``) from ``<checkpoint>.json``; None if unreadable."""
    path = Path(checkpoint)
    candidates = [path] if path.is_absolute() else [path, Path(workspace) / path]
    candidates.append(Path(workspace) / "checkpoints" / path.name)
    for candidate in candidates:
        try:
            meta = json.loads(candidate.with_suffix(".json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        mask = meta.get("frozen_mask", meta.get("frozen")) if isinstance(meta, dict) else None
        if isinstance(mask, list):
            return [bool(v) for v in mask]
    return None


def stage_names(workspace: Path) -> tuple[str, ...]:
    """Stage names from the workspace's settings (the defaults if they cannot be read)."""
    from dte_aar.config import default_stages, load_settings

    try:
        stages = load_settings(workspace).stages
    except Exception:  # a broken dte.toml must not stop anyone looking at the store
        stages = default_stages()
    return tuple(s.name for s in stages)


def _phase(row: tuple) -> str:
    statuses = dict(zip(PHASES, row[4:10], strict=True))
    for phase, status in statuses.items():
        if status == "running":
            return phase
    for phase, status in statuses.items():
        if status == "failed":
            return f"{phase} failed"
    if row[3] == "done":
        return "done"
    done = [p for p, s in statuses.items() if s == "done"]
    return f"{done[-1]} done" if done else "starting"


def parse_ts(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s"


def fmt_count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"
