from pathlib import Path
from types import SimpleNamespace

import pytest

from dte_aar.arena import load_arena
from dte_aar.hookspecs import Sample
from dte_aar.store import Store, text_hash
from dte_aar_plugins.dedup import DedupCurator
from dte_aar_plugins.quality import QualityCurator


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
