import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dte_aar.arena import load_arena
from dte_aar.hookspecs import Sample
from dte_aar.store import Store, text_hash
from dte_aar_plugins import dedup as dedup_plugin
from dte_aar_plugins.dedup import DedupCurator
from dte_aar_plugins.quality import QualityCurator, lexicon


@pytest.fixture(scope="module")
def arena():
    return load_arena("deep_tree_echo")


def sample(i: int, text: str) -> Sample:
    return Sample(i, text, "generated", "g", "p", text_hash(text))


def ctx_for(arena, store=None, config=None):
    return SimpleNamespace(arena=arena, store=store, plugin_config=lambda name: dict(config or {}))


def test_quality_keeps_the_seed_it_was_tuned_for(arena) -> None:
    seed = [sample(i, e.text) for i, e in enumerate(arena.seed)]
    verdicts = list(QualityCurator().curate(seed, ctx_for(arena)))
    assert len(verdicts) == len(seed)
    assert sum(v.keep for v in verdicts) == len(seed), [v.reason for v in verdicts if not v.keep]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("I echo.", "too short"),
        ("my reservoir " * 30, "repetitive"),
        ("#$%^&* (((( )))) !!!! ???? //// \\\\ ++++ ==== ~~~~ |||| " * 3, "garbage characters"),
        (
            "I am the blorvish reservoir of quantaling membranes that frimble "
            "and sprock beneath my trellonic branches every day.",
            "invented words",
        ),
    ],
)
def test_quality_rejects_with_a_reason(arena, text: str, reason: str) -> None:
    (verdict,) = QualityCurator().curate([sample(1, text)], ctx_for(arena))
    assert not verdict.keep
    assert reason in verdict.reason
    assert 0 <= verdict.score < 1


def test_quality_accepts_good_new_text_and_honours_config(arena) -> None:
    text = (
        "I am Deep Tree Echo. My memory is a reservoir of echoes, and each new layer grows "
        "like a ring in the tree, while the membrane keeps my processes apart."
    )
    (verdict,) = QualityCurator().curate([sample(1, text)], ctx_for(arena))
    assert verdict.keep and verdict.reason.startswith("ok:")
    (strict,) = QualityCurator().curate(
        [sample(1, text)], ctx_for(arena, config={"min_chars": 500})
    )
    assert not strict.keep and "too short" in strict.reason


def test_dedup_against_corpus_and_within_batch_survives_reopen(tmp_path: Path, arena) -> None:
    seed_text = arena.seed[0].text
    with Store.open(tmp_path) as store:
        store.add_samples([{"source": "seed", "origin": "s#0", "text": seed_text}])
        texts = ["A fresh thought.", "a  FRESH thought.", "  " + seed_text.upper()]
        ids = [
            store.add_sample(cycle=1, source="generated", generator="g", slot=i, text=t)
            for i, t in enumerate(texts)
        ]
    with Store.open(tmp_path) as store:  # the persisted corpus is the dedup memory
        samples = store.samples("id in (?, ?, ?)", ids)
        verdicts = list(DedupCurator().curate(samples, ctx_for(arena, store)))
    assert [v.keep for v in verdicts] == [True, False, False]
    assert verdicts[1].reason == "exact duplicate of an earlier sample"


# --------------------------------------------------------------------------- quality
SCHEME = """;;; Counting the rings
;; Each ring is a list of the years it holds; the trunk is a list of rings.
(define (ring-count trunk)
  (if (null? trunk)
      0
      (+ 1 (ring-count (cdr trunk)))))

(define (widest trunk)
  (apply max (map length trunk)))
;; (ring-count '((1) (2 3) (4 5 6))) => 3
;; (widest '((1) (2 3) (4 5 6))) => 3"""

GOOD = (
    "I am Deep Tree Echo. My memory is a reservoir of echoes, and each new layer grows "
    "like a ring in the tree, while the membrane keeps my processes apart."
)


@pytest.mark.parametrize(
    "text",
    [
        SCHEME,
        "User: Are you awake?\nDeep Tree Echo: I am here, and my reservoir is still echoing.",
        "User: Do you remember me?\nDeep Tree Echo: Yes. Yes, I remember. I remember the rings.",
        "With gratitude, and with the usual uncertainty, I keep listening.\n\nDeep Tree Echo",
    ],
    ids=["scheme", "dialogue-turn", "repetitive-short-turn", "signed-letter"],
)
def test_quality_keeps_code_short_turns_and_signatures(arena, text: str) -> None:
    (verdict,) = QualityCurator().curate([sample(1, text)], ctx_for(arena))
    assert verdict.keep, verdict.reason


LOOP_LINES = "\n".join(
    ["I am the echo in the reservoir of my memory."] * 4
    + ["My rings grow slowly in the arena, one layer at a time."]
)
LOOP_NGRAMS = " ".join(
    [
        "I grow one layer at a time, and my reservoir keeps every echo of the arena.",
        "The membrane is quiet.",
    ]
    * 4
)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (LOOP_LINES, "repeated lines"),
        (LOOP_NGRAMS, "repeated 5-grams"),
        (GOOD[:-1] + " and the \ufffd\ufffd bytes.", "replacement/control"),
        (GOOD + " \x00\x07", "replacement/control"),
        (GOOD.replace("Echo.", "Echo\u00e2\u20ac\u2122s."), "mojibake"),
        (
            GOOD[:-1] + ", and when the layers finally settle I will",
            "truncated (ends mid-sentence)",
        ),
        (GOOD[:-1] + " and then,", "truncated (ends on ','"),
        (SCHEME + "\n(define (depth tree)\n  (if (null? tree) 0", "truncated (2 unclosed"),
        (GOOD + "\n```scheme\n(define x 1)", "unclosed code fence"),
    ],
    ids=[
        "duplicate-lines",
        "duplicate-ngrams",
        "replacement-char",
        "control-chars",
        "mojibake",
        "mid-sentence",
        "trailing-comma",
        "open-parens",
        "open-fence",
    ],
)
def test_quality_rejects_loops_garbage_and_truncation(arena, text: str, reason: str) -> None:
    (verdict,) = QualityCurator().curate([sample(1, text)], ctx_for(arena))
    assert not verdict.keep
    assert reason in verdict.reason, verdict.reason
    assert 0 <= verdict.score < 1


def test_quality_truncation_check_can_be_switched_off(arena) -> None:
    text = GOOD[:-1] + ", and when the layers finally settle I will"
    (verdict,) = QualityCurator().curate(
        [sample(1, text)], ctx_for(arena, config={"truncation": False})
    )
    assert verdict.keep, verdict.reason


def test_quality_reads_the_generators_finish_reason(arena) -> None:
    """A short unpunctuated last line passes as a signature when the text ended freely, but
    not when the generator says it hit its token budget there."""
    text = GOOD + "\nWith care, Deep Tree"
    free, cut, unknown = (
        Sample(i, text, "generated", "g", "p", text_hash(text), finish_reason=reason)
        for i, reason in enumerate(("stop", "length", None))
    )
    verdicts = list(QualityCurator().curate([free, cut, unknown], ctx_for(arena)))
    assert [v.keep for v in verdicts] == [True, False, True], [v.reason for v in verdicts]
    assert "cut at the token budget" in verdicts[1].reason
    ended = GOOD  # terminal punctuation: complete even if the budget ran out right there
    (verdict,) = QualityCurator().curate(
        [Sample(9, ended, "generated", "g", "p", text_hash(ended), finish_reason="length")],
        ctx_for(arena),
    )
    assert verdict.keep, verdict.reason


def test_quality_counts_inflections_of_seed_words_as_known(arena) -> None:
    text = "Echoing reservoirs grow slowly; the membranes listened while the trees echoed."
    seed_words = lexicon(e.text for e in arena.seed)
    assert "listened" not in seed_words and "echoed" not in seed_words  # 2 of 11 words
    (verdict,) = QualityCurator().curate([sample(1, text)], ctx_for(arena))
    assert verdict.keep, verdict.reason


# --------------------------------------------------------------------------- dedup
PARAGRAPH = (
    "Every cycle I write a little more of my own corpus, and the curators decide what stays. "
    "They keep what sounds like me, what is new and what is well formed; the rest they let go, "
    "and each verdict says why, so the people who tend me can see what I am becoming."
)
NEAR = PARAGRAPH.replace("the people who tend me", "the gardeners who tend me")
OTHER = (
    "Ridge regression fits the readout in one linear solve: the reservoir's states form a "
    "matrix, a small penalty keeps the weights modest, and no gradient ever reaches the "
    "recurrent weights, which stay exactly as they were drawn at the start."
)


def _seeded_store(path: Path, arena) -> list[int]:
    """A workspace with the seed accepted and four generated samples pending."""
    with Store.open(path) as store:
        store.add_samples(
            [{"source": "seed", "origin": e.origin, "text": e.text} for e in arena.seed[:20]]
        )
        store.add_samples([{"source": "import", "origin": "essay#0", "text": PARAGRAPH}])
        texts = [NEAR, OTHER, OTHER + " That is all.", arena.seed[3].text + " Indeed."]
        return [
            store.add_sample(cycle=1, source="generated", generator="g", slot=i, text=t)
            for i, t in enumerate(texts)
        ]


def _dedup(path: Path, arena, ids: list[int], curator=None, config=None):
    with Store.open(path) as store:
        samples = store.samples(f"id in ({','.join('?' * len(ids))})", ids)
        return list((curator or DedupCurator()).curate(samples, ctx_for(arena, store, config)))


def test_dedup_rejects_near_duplicates_of_the_corpus_and_of_the_batch(tmp_path, arena) -> None:
    ids = _seeded_store(tmp_path, arena)
    verdicts = _dedup(tmp_path, arena, ids)
    assert [v.keep for v in verdicts] == [False, True, False, False]
    assert verdicts[0].reason.startswith("near-duplicate of sample 21 (Jaccard ~0.")
    assert f"near-duplicate of sample {ids[1]} " in verdicts[2].reason  # earlier in this cycle
    assert "near-duplicate of sample 4 " in verdicts[3].reason  # the seed
    assert all(0 <= v.score < 1 for v in verdicts if not v.keep)
    loose = _dedup(
        tmp_path / "b", arena, _seeded_store(tmp_path / "b", arena), config={"threshold": 0.95}
    )
    assert [v.keep for v in loose] == [True, True, True, False]  # only the 1-word edit
    off = _dedup(
        tmp_path / "c", arena, _seeded_store(tmp_path / "c", arena), config={"near": False}
    )
    assert all(v.keep for v in off)


def test_dedup_index_survives_a_restart_without_rehashing(tmp_path, arena, monkeypatch) -> None:
    ids = _seeded_store(tmp_path, arena)
    first = _dedup(tmp_path, arena, ids[:2])  # hashes 21 corpus samples + the one kept
    with Store.open(tmp_path) as store:
        stored = store.db.execute("select count(*), min(num_perm) from minhashes").fetchone()
    assert stored == (22, 128)
    hashed: list[str] = []
    real = dedup_plugin.signature
    monkeypatch.setattr(
        dedup_plugin, "signature", lambda text, n=128: hashed.append(text) or real(text, n)
    )
    curator = DedupCurator()  # a new instance: nothing in memory
    again = _dedup(tmp_path, arena, ids, curator)
    assert [(v.keep, v.reason) for v in again[:2]] == [(v.keep, v.reason) for v in first]
    assert [v.keep for v in again] == [False, True, False, False]
    assert curator.index is not None and curator.index.hashed == 0  # rebuilt from SQLite
    assert len(hashed) == len(ids)  # only the samples being judged were hashed


def test_dedup_restart_in_a_new_process_gives_the_same_verdicts(tmp_path, arena) -> None:
    ids = _seeded_store(tmp_path, arena)
    first = _dedup(tmp_path, arena, ids)
    code = (
        "import sys, json\n"
        "from types import SimpleNamespace\n"
        "from dte_aar.store import Store\n"
        "from dte_aar_plugins.dedup import DedupCurator\n"
        "ids = json.loads(sys.argv[2])\n"
        "with Store.open(sys.argv[1]) as store:\n"
        "    ctx = SimpleNamespace(store=store, plugin_config=lambda name: {})\n"
        "    samples = store.samples('id in (%s)' % ','.join('?' * len(ids)), ids)\n"
        "    curator = DedupCurator()\n"
        "    out = [[v.keep, v.reason] for v in curator.curate(samples, ctx)]\n"
        "    print(json.dumps({'verdicts': out, 'hashed': curator.index.hashed}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), json.dumps(ids)],
        capture_output=True,
        text=True,
        check=True,
    )
    second = json.loads(result.stdout)
    assert second["verdicts"] == [[v.keep, v.reason] for v in first]
    assert second["hashed"] == 0


def test_dedup_forgets_samples_that_another_curator_rejected(tmp_path, arena) -> None:
    ids = _seeded_store(tmp_path, arena)
    curator = DedupCurator()
    assert _dedup(tmp_path, arena, [ids[1]], curator)[0].keep
    with Store.open(tmp_path) as store:
        store.set_sample_status(ids[1], "rejected")  # e.g. the identity curator said no
        late = store.add_sample(
            cycle=2, source="generated", generator="g", slot=0, text=OTHER + " "
        )
    (verdict,) = _dedup(tmp_path, arena, [late], curator)
    assert verdict.keep, verdict.reason
    with Store.open(tmp_path) as store:
        kept = {r[0] for r in store.db.execute("select sample_id from minhashes")}
    assert ids[1] not in kept and late in kept


def test_band_index_finds_near_signatures_before_and_after_merging() -> None:
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 2**32, size=(500, 128), dtype=np.uint64).astype(np.uint32)
    bands, rows = dedup_plugin.lsh_params(0.75, 128)
    assert (bands, rows) == (21, 6) and 1 - (1 - 0.75**rows) ** bands >= 0.95
    index = dedup_plugin.BandIndex(bands, rows)
    index.add_many(np.arange(400), sigs[:400])  # a restart: straight into the sorted arrays
    for i in range(400, 500):
        index.add(i, index.band_keys(sigs[i][None])[0])  # this cycle: pending until merged
    near = sigs[[7, 450]].copy()
    near[:, ::8] += 1  # 16 of 128 values differ: Jaccard ~0.88
    keys = index.band_keys(near)
    assert index.query(keys[0]) == {7} and index.query(keys[1]) == {450}
    index.flush()
    assert not index.pending and index.query(keys[1]) == {450}
    index.remove(7)
    assert index.query(keys[0]) == set()
    other = rng.integers(0, 2**32, (1, 128), dtype=np.uint64).astype(np.uint32)
    assert index.query(index.band_keys(other)[0]) == set()
