"""The schema's history, ``llm``-style: small decorated functions applied once each, in order.

Never edit a migration that has shipped; add a new one. ``migrate(db)`` records each applied
migration in ``_dte_migrations`` so an existing database is brought forward, not rebuilt.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import sqlite_utils

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []
TABLE = "_dte_migrations"


def migration(fn: Callable[[sqlite_utils.Database], None]) -> Callable:
    MIGRATIONS.append(fn)
    return fn


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply every migration not yet recorded; return the names applied now."""
    table = db[TABLE]
    if not table.exists():
        db[TABLE].create({"name": str, "applied_at": str}, pk="name")
    done = {row["name"] for row in db[TABLE].rows}
    applied = []
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        with db.conn:
            fn(db)
            db[TABLE].insert({"name": fn.__name__, "applied_at": _now()})
        applied.append(fn.__name__)
    return applied


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    db["runs"].create(
        {
            "id": int,
            "started_at": str,
            "ended_at": str,
            "status": str,  # running | done | interrupted | failed
            "arena": str,
            "preset": str,
            "settings": str,  # JSON, secrets excluded
        },
        pk="id",
    )
    db["cycles"].create(
        {
            "n": int,
            "run_id": int,
            "stage": int,
            "layers": int,
            "status": str,  # running | done | failed
            "phase_generate": str,  # NULL | running | done | failed
            "phase_curate": str,
            "phase_train": str,
            "phase_evaluate": str,
            "phase_checkpoint": str,
            "phase_commit": str,
            "train_result": str,  # JSON: path, sha256, layers, params
            "error": str,
            "started_at": str,
            "ended_at": str,
        },
        pk="n",
    )
    db["samples"].create(
        {
            "id": int,
            "cycle": int,
            "source": str,  # seed | import | generated
            "origin": str,  # file#chunk for seed/import
            "generator": str,
            "slot": int,
            "model": str,
            "prompt": str,
            "text": str,
            "text_hash": str,
            "tokens": int,
            "cost": float,
            "split": str,  # train | heldout
            "status": str,  # pending | accepted | rejected
            "created_at": str,
        },
        pk="id",
    )
    db["samples"].create_index(["text_hash"])
    db["samples"].create_index(["status", "split"])
    db["samples"].create_index(["cycle", "generator", "slot"], unique=True)
    db["samples"].create_index(["source", "origin"], unique=True)
    db["verdicts"].create(
        {
            "id": int,
            "sample_id": int,
            "cycle": int,
            "curator": str,
            "keep": int,
            "score": float,
            "reason": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("sample_id", "samples", "id")],
    )
    db["verdicts"].create_index(["sample_id", "curator"], unique=True)
    db["metrics"].create(
        {
            "id": int,
            "run_id": int,
            "cycle": int,
            "phase": str,
            "stage": int,
            "layers": int,
            "step": int,
            "name": str,
            "value": float,
            "created_at": str,
        },
        pk="id",
    )
    db["metrics"].create_index(["cycle", "name"])
    db["checkpoints"].create(
        {
            "id": int,
            "cycle": int,
            "path": str,
            "sha256": str,
            "layers": int,
            "params": int,
            "status": str,  # good | bad
            "created_at": str,
        },
        pk="id",
    )
    db["events"].create(
        {
            "id": int,
            "ts": str,
            "run_id": int,
            "cycle": int,
            "phase": str,
            "kind": str,
            "data": str,
        },
        pk="id",
    )
    db["events"].create_index(["cycle"])
    db["control"].create(
        {"id": int, "ts": str, "command": str, "handled_at": str},
        pk="id",
    )


@migration
def m002_minhash_signatures(db: sqlite_utils.Database) -> None:
    """Near-duplicate memory: one MinHash signature per accepted sample, so a restarted
    dedup curator rebuilds its LSH index from SQLite instead of rehashing the corpus."""
    db["minhashes"].create(
        {"sample_id": int, "num_perm": int, "signature": bytes},
        pk="sample_id",
        foreign_keys=[("sample_id", "samples", "id")],
    )


@migration
def m003_reader_indexes(db: sqlite_utils.Database) -> None:
    """Covering indexes for the TUI and reports: loss curves by cycle, verdict tallies by
    curator, corpus counts by cycle, each answered from the index alone."""
    db.execute("drop index if exists idx_metrics_cycle_name")
    db["metrics"].create_index(["cycle", "name", "step", "value"])
    db["verdicts"].create_index(["cycle", "curator", "keep"])
    db["samples"].create_index(["cycle", "source", "generator", "status", "cost", "tokens"])


@migration
def m004_finetune_jobs(db: sqlite_utils.Database) -> None:
    """`dte finetune`'s jobs (credentials stripped from base_url) and their OpenAI events."""
    db["finetune_jobs"].create(
        {
            "id": int,
            "base_url": str,  # credentials stripped
            "model": str,  # the base model asked for
            "training_sha256": str,
            "training_file_id": str,
            "job_id": str,
            "status": str,  # exported | uploaded | <OpenAI job status>
            "fine_tuned_model": str,
            "examples": int,
            "tokens": int,  # estimated, per epoch
            "estimated_cost": float,
            "error": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        if_not_exists=True,  # databases where `dte finetune` made them before m004
    )
    db["finetune_events"].create(
        {
            "job_id": str,
            "event_id": str,
            "created_at": int,
            "level": str,
            "type": str,
            "message": str,
            "data": str,  # JSON
        },
        pk=("job_id", "event_id"),
        if_not_exists=True,  # databases where `dte finetune` made them before m004
    )


@migration
def m005_sample_finish_reason(db: sqlite_utils.Database) -> None:
    """Why a generated sample ended ("stop" or "length"), so curators know a cut-off text
    for certain instead of guessing from its last characters."""
    db["samples"].add_column("finish_reason", str)
