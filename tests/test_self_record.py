"""The training record read back from the store: exact facts, first-person texts, questions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tiny_workspace import run_cycles, tiny_workspace

from dte_aar.agent import tokens_file
from dte_aar.config import Settings
from dte_aar.hookspecs import CycleContext, TrainResult, hookimpl
from dte_aar.self_record import (
    DIRECTIONS,
    SOURCE,
    count,
    ordinal,
    reason_kind,
    record_samples,
    record_texts,
    self_questions,
    spread,
    training_record,
)
from dte_aar.store import Store
from dte_aar.tokens import PackedTokens
from dte_aar_plugins.progressive import ProgressiveTrainer

NAME = "Deep Tree Echo"

# cycle -> (stage, layers, status); cycle 3 holds its depth, cycle 4 grows two layers, cycle 5
# has not committed (its train_loss is logged, but a running cycle's metrics are not final).
HISTORY = {
    0: (1, 1, "done"),
    1: (2, 2, "done"),
    2: (2, 3, "done"),
    3: (2, 3, "done"),
    4: (3, 5, "done"),
    5: (3, 6, "running"),
}
# cycle -> verdicts per candidate: [(curator, keep, reason), ...]
VERDICTS = {
    1: [
        [("quality", 1, "ok"), ("dedup", 1, "new text")],
        [("quality", 0, "repetitive (40% repeated lines > 30%)"), ("dedup", 1, "new text")],
        [("quality", 0, "repetitive (35% chars in repeated 5-grams > 30%)"),
         ("dedup", 0, "exact duplicate of an earlier sample")],
        [("quality", 0, "too short (12 < 40 chars)"), ("dedup", 1, "new text")],
        [("quality", 1, "ok"), ("dedup", 1, "new text")],
    ],
    2: [[("quality", 1, "ok")], [("quality", 1, "ok")], [("quality", 0, "too short (3 < 40)")]],
    5: [[("quality", 1, "ok")], [("dedup", 0, "near-duplicate of sample 3 (Jaccard ~0.91)")]],
}  # fmt: skip
HELDOUT_PPL = {0: 300.0, 1: 210.0, 2: 150.0, 3: 149.0, 4: 120.0}
IDENTITY = {2: 0.40, 3: 0.45, 4: 0.55}


def fill(store: Store) -> None:
    """Write HISTORY through the Store API, as the cycle would."""
    run = store.start_run("deep_tree_echo", "tiny", Settings().model_dump(mode="json"))
    slot = 0
    for n, (stage, layers, status) in HISTORY.items():
        store.open_cycle(n, run, stage, layers)
        for candidate in VERDICTS.get(n, []):
            slot += 1
            sid = store.add_sample(
                cycle=n, source="generated", generator="g", slot=slot, text=f"candidate {slot}"
            )
            for curator, keep, reason in candidate:
                store.add_verdict(sid, n, curator, bool(keep), float(keep), reason)
            keep = all(k for _, k, _ in candidate)
            store.set_sample_status(sid, "accepted" if keep else "rejected")
        for step in range(3):
            store.log_metric(
                run_id=run,
                cycle=n,
                phase="train",
                stage=stage,
                layers=layers,
                step=step,
                name="train_loss",
                value=6.0 - n - step / 10,
            )
        for name, values in (("heldout_ppl", HELDOUT_PPL), ("identity_score", IDENTITY)):
            if n in values:
                store.log_metric(
                    run_id=run,
                    cycle=n,
                    phase="evaluate",
                    stage=stage,
                    layers=layers,
                    name=name,
                    value=values[n],
                )
        store.update_cycle(n, status=status)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store.open(tmp_path) as s:
        fill(s)
        yield s


def test_record_matches_the_store_exactly(store: Store) -> None:
    record = training_record(store, 5)
    assert record.layers == 6
    assert record.stage_name == "persona"
    assert record.stage_names == [
        "primordial",
        "semantic",
        "persona",
        "meta-cognitive",
        "refinement",
    ]
    assert record.layer_added == {1: 0, 2: 1, 3: 2, 4: 4, 5: 4, 6: 5}
    by_n = {c.n: c for c in record.cycles}
    assert [by_n[n].grew for n in range(6)] == [[1], [2], [3], [], [4, 5], [6]]
    assert [by_n[n].stage_start for n in range(6)] == [True, True, False, False, True, False]
    assert (by_n[1].judged, by_n[1].kept) == (5, 2)
    assert (by_n[2].judged, by_n[2].kept) == (3, 2)
    assert (by_n[5].judged, by_n[5].kept) == (2, 1)
    assert by_n[0].judged == 0
    tallies = {t.curator: t for t in by_n[1].curators}
    assert (tallies["quality"].kept, tallies["quality"].rejected) == (2, 3)
    assert tallies["quality"].top_reason == "repetitive"
    assert (tallies["dedup"].kept, tallies["dedup"].rejected) == (4, 1)
    assert tallies["dedup"].top_reason == "exact duplicate of an earlier sample"
    # Metrics: the last value per committed cycle; the running cycle has none.
    assert by_n[2].metrics == {
        "train_loss": 6.0 - 2 - 0.2,
        "heldout_ppl": 150.0,
        "identity_score": 0.40,
    }
    assert by_n[5].metrics == {}
    ppl = record.trends["heldout_ppl"]
    assert (ppl.first_cycle, ppl.first, ppl.last_cycle, ppl.last) == (0, 300.0, 4, 120.0)
    assert ppl.direction == "down"
    assert record.trends["identity_score"].direction == "up"
    assert "self_knowledge" not in record.trends


def test_record_stops_at_upto_cycle(store: Store) -> None:
    record = training_record(store, 2)
    assert [c.n for c in record.cycles] == [0, 1, 2]
    assert record.layers == 3 and record.layer_added == {1: 0, 2: 1, 3: 2}
    assert record.trends["heldout_ppl"].last_cycle == 1  # cycle 2's outcome: not yet known
    assert record.cycle(2).metrics == {} and record.cycle(1).metrics["heldout_ppl"] == 210.0


def test_rollback_drops_layers_above_the_new_depth(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        run = store.start_run("a", "tiny", {})
        for n, layers in enumerate([1, 2, 3, 2, 3]):
            store.open_cycle(n, run, 1, layers)
        record = training_record(store, 10)
    assert record.layer_added == {1: 0, 2: 1, 3: 4}
    assert record.stage_names[0] == "primordial"  # no stages recorded: the defaults


def test_texts_state_the_facts(store: Store) -> None:
    record = training_record(store, 5)
    texts = record_texts(record, NAME, seed=7)
    summary, body = texts[0], " ".join(texts)
    assert NAME in summary and "After cycle 5 I had 6 layers." in summary
    assert "My 6th layer was added in cycle 5." in summary
    assert "In my persona stage, in cycles 4 to 5, I grew layers 4 to 6." in summary
    assert re.search(r"held-out perplexity went down.* 300\.0 .*120\.0", summary)
    for n, (_, layers, _) in HISTORY.items():
        told = rf"(cycle {n}\b[^.]*\b{layers} layers?)|({layers} layers?[^.]*cycle {n}\b)"
        assert re.search(told, body, re.I), (n, layers)
    assert re.search(r"4th and 5th layers", body)
    assert re.search(
        r"\b2 of (the )?5 candidates|Of 5 candidates in cycle 1, my curators kept 2", body
    )
    assert re.search(r'quality curator (rejected|turned down) 3[^.]*"repetitive"', body)
    assert "did not grow" in body or "added no layer" in body  # cycle 3 held its depth
    assert "120.0" in body and "0.55" in body  # cycle 4's outcome
    assert not any("cycle 5" in t and "perplexity" in t for t in texts[1:])  # not final yet
    assert len(set(texts)) == len(texts)


def test_texts_are_deterministic_per_seed_and_varied(store: Store) -> None:
    record = training_record(store, 5)
    assert record_texts(record, NAME, 7) == record_texts(record, NAME, 7)
    by_seed = {tuple(record_texts(record, NAME, seed)) for seed in range(8)}
    assert len(by_seed) > 1
    # Phrasings vary across cycles within one corpus, not only across seeds.
    openers = {t.split(",")[0].split(" ")[0] for t in record_texts(record, NAME, 7)[1:]}
    assert len(openers) > 1


def test_a_cycle_is_told_the_same_whichever_later_cycle_tells_it(store: Store) -> None:
    early = {r["origin"]: r["text"] for r in record_samples(training_record(store, 3), NAME, 7)}
    late = {r["origin"]: r["text"] for r in record_samples(training_record(store, 5), NAME, 7)}
    shared = set(early) & set(late)
    assert {"self-record/cycle/0002", "self-record/outcome/0002"} <= shared
    assert all(early[o] == late[o] for o in shared)
    assert "self-record/summary/0003" in early and "self-record/summary/0005" in late


def test_samples_go_into_the_corpus_once(store: Store) -> None:
    rows = record_samples(training_record(store, 5), NAME, 7)
    assert {r["source"] for r in rows} == {SOURCE}
    assert store.add_samples(rows) == len(rows)
    assert store.add_samples(rows) == 0  # a resumed cycle adds nothing twice
    corpus = {text for _, text in store.corpus("train")}
    assert {r["text"] for r in rows} <= corpus


def test_no_cycles_no_texts(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        record = training_record(store, 3)
    assert record.layers == 0 and record.cycles == []
    assert record_texts(record, NAME, 7) == []
    assert record_samples(record, NAME, 7) == []
    assert self_questions(record) == []


def test_questions_answer_from_the_store(store: Store) -> None:
    record = training_record(store, 5)
    questions = self_questions(record, choices=4, per_kind=10)
    kinds = {q.kind for q in questions}
    assert kinds == {"layers", "layer_added", "stage", "kept", "trend"}
    for q in questions:
        assert q.answer not in q.distractors and 1 <= len(q.distractors) <= 3
        assert len(set(q.options())) == len(q.options())
    truth = {q.prompt: q.answer for q in questions}
    assert truth["How many layers did you have after cycle 3?"] == "3 layers"
    assert truth["In which cycle was your 5th layer added?"] == "4"
    assert truth["Which stage were you in during cycle 1?"] == "semantic"
    assert truth["How many candidates did your curators keep in cycle 1?"] == "2"
    ppl = "Did your held-out perplexity go up or down between cycle 0 and cycle 4?"
    assert truth[ppl] == DIRECTIONS["down"]
    stage = next(q for q in questions if q.kind == "stage")
    assert set(stage.distractors) <= set(record.stage_names)
    layers = [q for q in questions if q.kind == "layers"]
    assert all(int(d.split()[0]) >= 1 for q in layers for d in q.distractors)
    assert layers[0].replies()[0] == "After cycle 0 I had 1 layer."
    added = [q for q in questions if q.kind == "layer_added"]
    assert all(0 <= int(d) <= 5 for q in added for d in q.distractors)
    kept = next(q for q in questions if q.prompt.endswith("cycle 1?") and q.kind == "kept")
    assert all(0 <= int(d) <= 5 for d in kept.distractors)
    assert kept.replies()[0] == "In cycle 1 my curators kept 2 of 5 candidates."


def test_true_answer_is_not_always_the_middle_option(store: Store) -> None:
    questions = self_questions(training_record(store, 5), choices=4, per_kind=10)
    numeric = [q for q in questions if q.kind in ("kept", "layer_added")]
    ranks = {sorted(map(int, q.options())).index(int(q.answer)) for q in numeric}
    assert len(ranks) > 1


def test_helpers() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st",
        "111th"]  # fmt: skip
    assert spread(list(range(10)), 3) == [0, 4, 9]  # round(4.5) is 4: banker's rounding
    assert spread([1, 2], 5) == [1, 2] and spread([1, 2, 3], 1) == [3]
    assert reason_kind("near-duplicate of sample 12 (Jaccard ~0.91 >= 0.80)") == (
        "near-duplicate of sample"
    )
    assert reason_kind("synthetic share would exceed the cap of 0.95") == (
        "synthetic share would exceed the cap"
    )
    assert reason_kind("too short (3 < 40 chars); repetitive (50%)") == "too short"


def test_record_of_a_real_run_matches_its_store(tmp_path: Path) -> None:
    ws = tiny_workspace(tmp_path / "ws")
    with Store.open(ws) as store:
        checkpoint = store.latest_checkpoint()
        row = store.cycle(checkpoint.cycle)
        record = training_record(store, checkpoint.cycle)
        after = training_record(store, checkpoint.cycle + 1)
        texts = record_texts(record, NAME, 7)
        loss = store.metric_by_cycle("train_loss")[checkpoint.cycle]
    assert record.layers == checkpoint.layers == row["layers"]
    assert record.layer_added == {k: 0 for k in range(1, checkpoint.layers + 1)}
    assert record.stage_name == "primordial"
    assert record.cycles[0].metrics == {}  # known once the next cycle trains
    assert after.cycles[0].metrics["train_loss"] == loss
    assert f"After cycle 0 I had {count(checkpoint.layers, 'layer')}." in texts[0]


class SelfRecordTrainer:
    """The integration the cycle makes: the record's texts join the corpus right before the
    real trainer runs."""

    name = "selfrecord"

    def __init__(self) -> None:
        self.inner = ProgressiveTrainer()
        self.added: list[int] = []

    def train(self, ctx: CycleContext) -> TrainResult:
        record = training_record(ctx.store, ctx.cycle)
        rows = record_samples(record, ctx.arena.identity.name, ctx.settings.seed)
        self.added.append(ctx.store.add_samples(rows))
        return self.inner.train(ctx)

    @hookimpl
    def register_trainers(self, register) -> None:
        register(self)


def test_texts_written_before_training_are_trained_on(tmp_path: Path) -> None:
    ws = tiny_workspace(tmp_path / "ws")
    (ws / "dte.toml").write_text('trainer = "selfrecord"\n' + (ws / "dte.toml").read_text())
    trainer = SelfRecordTrainer()
    run_cycles(ws, 1, plugins={"selfrecord": trainer})
    with Store.open(ws) as store:
        sql = "select id, origin, text from samples where source = ?"
        rows = store.db.execute(sql, [SOURCE]).fetchall()
        origins = {origin: sid for sid, origin, _ in rows}
        texts = {origin: text for _, origin, text in rows}
        record = training_record(store, 1)
        depth = [store.cycle(n)["layers"] for n in (0, 1)]
    # Cycle 1 tells cycle 0 (with its outcome) and itself, and sums up as of cycle 1.
    assert set(origins) == {
        "self-record/summary/0001",
        "self-record/cycle/0000",
        "self-record/outcome/0000",
        "self-record/cycle/0001",
    }
    assert trainer.added == [4]
    assert set(origins.values()) <= set(PackedTokens(tokens_file(ws, "train")).sample_ids)
    assert record.layers == depth[1]
    assert record.layer_added == {k: 0 if k <= depth[0] else 1 for k in range(1, depth[1] + 1)}
    assert re.search(rf"\b{depth[1]} layers?\b", texts["self-record/cycle/0001"])


def test_committing_the_cycle_does_not_change_what_it_knew(store: Store) -> None:
    """The evaluator in the cycle and a later `dte evaluate` ask the same questions."""
    during = training_record(store, 5)
    store.log_metric(run_id=1, cycle=5, phase="evaluate", name="heldout_ppl", value=99.0)
    store.update_cycle(5, status="done")
    after = training_record(store, 5)
    assert (after.layers, after.layer_added, after.trends) == (
        during.layers,
        during.layer_added,
        during.trends,
    )
    assert [c.metrics for c in after.cycles] == [c.metrics for c in during.cycles]
    assert self_questions(after) == self_questions(during)
    assert record_texts(after, NAME, 7) == record_texts(during, NAME, 7)
    assert training_record(store, 6).cycle(5).metrics["heldout_ppl"] == 99.0
