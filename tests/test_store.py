import sqlite3
from pathlib import Path

import pytest

from dte_aar import migrations
from dte_aar.store import Store, StoreError


def test_wal_busy_timeout_and_tables(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        assert store.db.execute("pragma journal_mode").fetchone()[0] == "wal"
        assert store.db.execute("pragma busy_timeout").fetchone()[0] == 10_000
        tables = set(store.db.table_names())
    assert {
        "runs", "cycles", "samples", "verdicts", "metrics", "checkpoints", "events", "control",
        "_dte_migrations",
    } <= tables  # fmt: skip


def test_readers_are_read_only(tmp_path: Path) -> None:
    Store.open(tmp_path).close()
    with Store.open(tmp_path, readonly=True) as reader:
        assert reader.db.execute("pragma busy_timeout").fetchone()[0] == 10_000
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.db.execute("insert into control (ts, command) values ('x', 'stop')")


def test_reader_on_missing_db_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no database yet"):
        Store.open(tmp_path / "nowhere", readonly=True)


def test_migrations_bring_an_existing_database_forward(tmp_path: Path, monkeypatch) -> None:
    with Store.open(tmp_path) as store:
        store.add_samples([{"source": "seed", "origin": "a#0", "text": "kept across migrations"}])

    calls = []

    def m999_add_notes(db) -> None:
        calls.append(1)
        db["samples"].add_column("note", str)

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, m999_add_notes])
    with Store.open(tmp_path) as store:
        assert "note" in store.db["samples"].columns_dict
        assert [r["text"] for r in store.db["samples"].rows] == ["kept across migrations"]
    with Store.open(tmp_path) as store:  # applied once, not again
        names = [r["name"] for r in store.db["_dte_migrations"].rows]
    assert calls == [1]
    assert names == [
        "m001_initial", "m002_minhash_signatures", "m003_reader_indexes", "m004_finetune_jobs",
        "m005_sample_finish_reason", "m999_add_notes",
    ]  # fmt: skip


def test_sample_slots_are_unique(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        first = store.add_sample(cycle=1, source="generated", generator="g", slot=0, text="a b c")
        again = store.add_sample(cycle=1, source="generated", generator="g", slot=0, text="x y")
        assert first is not None and again is None
        assert store.filled_slots(1, "g") == {0}


def test_seed_rows_are_idempotent_and_dedup_key_normalises(tmp_path: Path) -> None:
    rows = [{"source": "seed", "origin": f"f#{i}", "text": f"Text  number {i}"} for i in range(3)]
    with Store.open(tmp_path) as store:
        assert store.add_samples(rows) == 3
        assert store.add_samples(rows) == 0
        assert store.hash_exists(__import__("dte_aar.store").store.text_hash("text number 1"))
        assert [i for i, _ in store.corpus("train")] == [1, 2, 3]


def test_verdict_batches_write_per_batch_and_on_any_exit(tmp_path: Path) -> None:
    with Store.open(tmp_path / "ws") as store:
        store.add_samples([{"cycle": 1, "source": "import", "text": f"t{i}"} for i in range(5)])

        def row(i: int, keep: bool = True) -> dict:
            return {"sample_id": i, "cycle": 1, "curator": "q", "keep": keep, "score": 1,
                    "reason": "ok"}  # fmt: skip

        batches = store.verdict_batches(max_rows=2, max_seconds=3600)
        with pytest.raises(RuntimeError), batches as add:
            add(row(1))
            assert store.db["verdicts"].count == 0  # queued
            add(row(2))
            assert store.db["verdicts"].count == 2  # a full batch is written
            add(row(3))
            raise RuntimeError("curator crashed")
        assert store.db["verdicts"].count == 3  # the rest on the way out
        with store.verdict_batches() as add:
            add(row(3, keep=False))  # already judged: the first verdict stands
            add(row(4))
        assert store.judged("q", [1, 2, 3, 4, 5]) == {1, 2, 3, 4}
        assert store.verdicts_for(3)[0]["keep"] == 1
