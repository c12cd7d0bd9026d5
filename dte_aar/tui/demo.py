"""A synthetic but realistic store, fast to build: for the TUI's tests, its benchmark and a look.

Rows are what the bootstrap loop records (cycles, per-step losses, evaluations, samples with
verdicts, checkpoints with sidecars, events), deterministic for a given set of arguments and
written with ``executemany``: a 1M-metric, 100k-sample store takes a few seconds.

    python -m dte_aar.tui.demo WORKSPACE [--cycles 12 --steps 300 --samples 40]
    dte watch WORKSPACE
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import random
import sqlite3
from pathlib import Path

from dte_aar.store import PHASES, Store

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
STEP_METRICS = ("train_loss", "loss_ce", "loss_identity", "grad_norm", "lr")
CURATORS = ("quality", "dedup")
# fmt: off
WORDS = ("echo", "tree", "deep", "memory", "pattern", "resonance", "self", "identity", "weave",
         "branch", "root", "signal", "reflect", "grow", "layer", "thought", "network", "recursion")
# fmt: on


def stage_of(layers: int) -> int:
    """The default stages' layer ranges: 1 | 2-8 | 9-16 | 17-24 | 25+."""
    for stage, last in enumerate((1, 8, 16, 24), start=1):
        if layers <= last:
            return stage
    return 5


def ts(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def fill_store(
    workspace: Path,
    cycles: int = 6,
    steps: int = 200,
    samples_per_cycle: int = 20,
    seed_samples: int = 50,
    running: bool = False,
    rng_seed: int = 7,
) -> Path:
    """Create ``<workspace>/dte.db`` (the real schema) holding ``cycles`` committed cycles.

    ``running``: the run is still going (no end time) and the last cycle is mid-training.
    """
    workspace = Path(workspace)
    Store.open(workspace, readonly=False).close()  # the real schema, migrations applied
    rng = random.Random(rng_seed)
    conn = sqlite3.connect(workspace / "dte.db")
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA synchronous = OFF")
    with conn:
        conn.execute(
            "insert into runs (id, started_at, ended_at, status, arena, preset, settings)"
            " values (1, ?, ?, ?, 'deep_tree_echo', 'tiny', '{}')",
            [ts(0), None if running else ts(cycles * 3600), "running" if running else "done"],
        )
        seed_rows = [
            (0, "seed", f"seed/{i}.txt#0", None, None, _text(rng, 12), f"seed{i}", 16, 0.0,
             "heldout" if i % 10 == 0 else "train", "accepted", ts(0))
            for i in range(seed_samples)
        ]  # fmt: skip
        _insert_samples(conn, seed_rows)
        for n in range(1, cycles + 1):
            add_cycle(conn, workspace, rng, n, steps, samples_per_cycle)
        if running:
            conn.execute(
                "update cycles set status = 'running', ended_at = null, phase_train = 'running',"
                " phase_evaluate = null, phase_checkpoint = null, phase_commit = null,"
                " train_result = null where n = ?",
                [cycles],
            )
            conn.execute(
                "delete from metrics where cycle = ? and (phase = 'evaluate' or"
                " (phase = 'train' and (step is null or step >= ?)))",
                [cycles, steps // 2],
            )
            conn.execute("delete from checkpoints where cycle = ?", [cycles])
            conn.execute(
                "delete from events where cycle = ? and (phase in ('evaluate', 'checkpoint',"
                " 'commit') or kind = 'cycle_done' or (phase = 'train' and kind = 'phase_ended'))",
                [cycles],
            )
    conn.close()
    return workspace


def add_cycle(
    conn: sqlite3.Connection,
    workspace: Path,
    rng: random.Random,
    n: int,
    steps: int,
    samples_per_cycle: int,
) -> None:
    """One committed cycle that grew one layer: every row the loop would have written."""
    layers, stage = n, stage_of(n)
    start = (n - 1) * 3600.0
    path = workspace / "checkpoints" / f"cycle-{n:04d}.safetensors"
    conn.execute(
        "insert into cycles (n, run_id, stage, layers, status, phase_generate, phase_curate,"
        " phase_train, phase_evaluate, phase_checkpoint, phase_commit, train_result,"
        " started_at, ended_at) values (?, 1, ?, ?, 'done', 'done', 'done', 'done', 'done',"
        " 'done', 'done', ?, ?, ?)",
        [n, stage, layers, json.dumps({"path": str(path), "layers": layers}), ts(start),
         ts(start + 3500)],
    )  # fmt: skip

    # generate + curate
    first_id = (conn.execute("select max(id) from samples").fetchone()[0] or 0) + 1
    rows, verdicts = [], []
    for slot in range(samples_per_cycle):
        generator = "openai" if slot % 4 == 3 else "checkpoint"
        keeps = [rng.random() > 0.15, rng.random() > 0.1]
        keep = all(keeps)
        rows.append(
            (n, "generated", None, generator, slot, _text(rng, rng.randint(6, 30)),
             f"{n}:{slot}", rng.randint(8, 80), 0.0004 if generator == "openai" else 0.0,
             "train", "accepted" if keep else "rejected", ts(start + 60 + slot * 0.01))
        )  # fmt: skip
        sid = first_id + slot
        for curator, kept in zip(CURATORS, keeps, strict=True):
            reason = "ok" if kept else {"quality": "too repetitive", "dedup": "near-duplicate"}
            reason = reason if kept else reason[curator]
            verdicts.append((sid, n, curator, int(kept), round(rng.random(), 3), reason))
    _insert_samples(conn, rows)
    conn.executemany(
        "insert into verdicts (sample_id, cycle, curator, keep, score, reason, created_at)"
        " values (?, ?, ?, ?, ?, ?, '')",
        verdicts,
    )
    real, synthetic = conn.execute(
        "select sum(source != 'generated'), sum(source = 'generated') from samples"
        " where status = 'accepted'"
    ).fetchone()

    # train: per-step metrics, then the cycle's summary
    base = 6.5 * math.exp(-0.08 * n) + 2.0
    metric_rows = []
    for step in range(steps):
        loss = base + 0.9 * math.exp(-step / max(1, steps / 5)) + rng.gauss(0, 0.05)
        values = (loss, loss * 0.95, loss * 0.05, 1.0 + rng.random(), 3e-4)
        for name, value in zip(STEP_METRICS, values, strict=True):
            metric_rows.append((n, "train", stage, layers, step, name, value))
    metric_rows += [
        (n, "train", stage, layers, None, "train_loss", base),
        (n, "train", stage, layers, None, "tokens", float(steps * 8 * 64)),
        (n, "curate", stage, layers, None, "corpus_real", float(real)),
        (n, "curate", stage, layers, None, "corpus_synthetic", float(synthetic)),
        (n, "curate", stage, layers, None, "synthetic_share", synthetic / (real + synthetic)),
        (n, "evaluate", stage, layers, None, "heldout_ppl", math.exp(base + 0.3)),
        (n, "evaluate", stage, layers, None, "identity_score", min(1.0, 0.4 + 0.03 * n)),
        (n, "evaluate", stage, layers, None, "probe_ppl", math.exp(base + 0.5)),
        (n, "evaluate", stage, layers, None, "phrase_completion", phrases := 0.1 + 0.05 * n),
        (n, "evaluate", stage, layers, None, "phrase_completion_pass", float(phrases >= 0.25)),
    ]
    conn.executemany(
        "insert into metrics (run_id, cycle, phase, stage, layers, step, name, value,"
        " created_at) values (1, ?, ?, ?, ?, ?, ?, ?, '')",
        metric_rows,
    )

    # checkpoint (+ sidecar) and events
    conn.execute(
        "insert into checkpoints (cycle, path, sha256, layers, params, status, created_at)"
        " values (?, ?, ?, ?, ?, 'good', ?)",
        [n, str(path), f"{n:064x}", layers, 100_000 * layers, ts(start + 3400)],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frozen = [i < layers - 1 for i in range(layers)]
    path.with_suffix(".json").write_text(
        json.dumps({"cycle": n, "layers": layers, "frozen": frozen, "stage": stage})
    )
    events = [(ts(start), n, None, "cycle_started", json.dumps({"layers": layers}))]
    for i, phase in enumerate(PHASES):
        events.append((ts(start + i * 500), n, phase, "phase_started", "{}"))
        if phase == "generate":
            events += [
                (ts(start + 60), n, phase, "sample", json.dumps({"id": first_id + k}))
                for k in range(samples_per_cycle)
            ]
        events.append((ts(start + i * 500 + 400), n, phase, "phase_ended", "{}"))
    events.append((ts(start + 3500), n, None, "cycle_done", json.dumps({"layers": layers})))
    conn.executemany(
        "insert into events (ts, run_id, cycle, phase, kind, data) values (?, 1, ?, ?, ?, ?)",
        events,
    )


def _insert_samples(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    conn.executemany(
        "insert into samples (cycle, source, origin, generator, slot, text, text_hash, tokens,"
        " cost, split, status, created_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--cycles", type=int, default=12)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--running", action="store_true")
    args = parser.parse_args()
    fill_store(args.workspace, args.cycles, args.steps, args.samples, running=args.running)
    print(f"demo store: {args.workspace / 'dte.db'}  (dte watch {args.workspace})")


if __name__ == "__main__":
    main()
