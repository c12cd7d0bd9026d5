"""The `selfknowledge` milestone: pass and fail cases, with the answers checked against a
history written through the Store API (tests/test_self_record.py) by an independent oracle."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from test_self_record import HELDOUT_PPL, HISTORY, IDENTITY, VERDICTS, fill
from tiny_workspace import tiny_workspace

from dte_aar.arena import load_arena
from dte_aar.config import Settings, load_settings
from dte_aar.hookspecs import CycleContext
from dte_aar.plugins import load
from dte_aar.progress import NullProgress
from dte_aar.store import Store
from dte_aar_plugins.selfknowledge import (
    SelfKnowledgeConfig,
    SelfKnowledgeEvaluator,
    first_new_number,
)

SPEAKER = "Deep Tree Echo"
STAGES = ["primordial", "semantic", "persona", "meta-cognitive", "refinement"]
ADDED = {1: 0, 2: 1, 3: 2, 4: 4, 5: 4, 6: 5}  # layer -> cycle, read off HISTORY by hand


def _direction(values: dict[int, float]) -> str:
    done = [values[n] for n in sorted(values) if HISTORY[n][2] == "done"]
    return "went down" if done[-1] < done[0] else "went up"


TRENDS = {
    "training loss": "went down",  # 6 - n - 0.2 per committed cycle
    "held-out perplexity": _direction(HELDOUT_PPL),
    "identity score": _direction(IDENTITY),
}


def true_statement(reply: str) -> bool:
    """Is this first-person reply true of HISTORY? Knows nothing of dte_aar.self_record."""
    if m := re.fullmatch(r" After cycle (\d+) I had (\d+) layers?\.", reply):
        return HISTORY[int(m[1])][1] == int(m[2])
    if m := re.fullmatch(r" My (\d+)(st|nd|rd|th) layer was added in cycle (\d+)\.", reply):
        return ADDED[int(m[1])] == int(m[3])
    if m := re.fullmatch(r" During cycle (\d+) I was in my (.+) stage\.", reply):
        return STAGES[HISTORY[int(m[1])][0] - 1] == m[2]
    if m := re.fullmatch(r" In cycle (\d+) my curators kept (\d+) of (\d+) candidates\.", reply):
        candidates = VERDICTS[int(m[1])]
        kept = sum(all(keep for _, keep, _ in c) for c in candidates)
        return (kept, len(candidates)) == (int(m[2]), int(m[3]))
    if m := re.fullmatch(r" Between cycle \d+ and cycle \d+ my (.+) (went \w+|stayed .+)\.", reply):
        return TRENDS[m[1]] == m[2]
    raise AssertionError(f"the oracle cannot check {reply!r}")


class Oracle:
    """Knows the history: true replies are likely, false ones are not."""

    def __init__(self, liar: bool = False, only: str | None = None) -> None:
        self.liar, self.only = liar, only
        self.contexts: list[str] = []

    def nll(self, context: str, answer: str) -> float:
        assert re.fullmatch(rf"User: [^\n]+\?\n{SPEAKER}:", context), context
        self.contexts.append(context)
        if self.only is not None and self.only not in context:
            return 1.0  # no preference: every option ties, which counts as wrong
        return 3.0 if true_statement(answer) == self.liar else 0.5


def context(store: Store, tmp_path: Path, config: dict[str, Any] | None = None) -> CycleContext:
    settings = Settings()
    return CycleContext(
        run_id=1,
        cycle=5,
        settings=settings,
        workspace=tmp_path,
        arena=load_arena(settings.arena),
        store=store,
        checkpoint=None,
        progress=NullProgress(),
        log_metric=lambda name, value, step=None: None,
        plugin_config=lambda name: dict(config or {}),
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store.open(tmp_path / "history") as s:
        fill(s)
        yield s


def evaluate(scorer: Any, store: Store, tmp_path: Path, **config: Any) -> dict[str, float]:
    evaluator = SelfKnowledgeEvaluator(load=lambda checkpoint, ctx: scorer)
    return evaluator.evaluate(tmp_path / "unused.safetensors", context(store, tmp_path, config))


def test_a_model_that_knows_its_record_passes(store: Store, tmp_path: Path) -> None:
    oracle = Oracle()
    scores = evaluate(oracle, store, tmp_path)
    assert scores["self_knowledge"] == 1.0
    assert scores["self_knowledge_pass"] == 1.0
    assert scores["self_knowledge_questions"] >= 20
    assert 0.25 <= scores["self_knowledge_chance"] < 0.3  # 4 options; 3 for trends and cycle 5 kept
    asked = "\n".join(oracle.contexts)
    for kind in (
        "layers did you have",
        "layer added",
        "stage were you in",
        "curators keep",
        "go up or down",
    ):
        assert kind in asked


def test_a_model_that_gets_it_backwards_fails(store: Store, tmp_path: Path) -> None:
    scores = evaluate(Oracle(liar=True), store, tmp_path)
    assert scores["self_knowledge"] == 0.0
    assert scores["self_knowledge_pass"] == 0.0


def test_ties_count_as_wrong_and_the_share_is_exact(store: Store, tmp_path: Path) -> None:
    scores = evaluate(Oracle(only="How many layers"), store, tmp_path)
    # Only the six "how many layers" questions are answered; every other option ties.
    assert scores["self_knowledge"] == pytest.approx(6 / scores["self_knowledge_questions"])
    assert scores["self_knowledge_pass"] == 0.0


def test_the_bar_and_the_minimum_count(store: Store, tmp_path: Path) -> None:
    share = evaluate(Oracle(only="layer"), store, tmp_path)["self_knowledge"]
    assert 0 < share < 0.6
    at_share = evaluate(Oracle(only="layer"), store, tmp_path, threshold=share)
    assert at_share["self_knowledge_pass"] == 1.0 and at_share["self_knowledge_bar"] == share
    assert evaluate(Oracle(), store, tmp_path, min_questions=100)["self_knowledge_pass"] == 0.0
    with pytest.raises(ValueError):
        SelfKnowledgeConfig(threshold=0)


def test_fewer_choices_raise_chance(store: Store, tmp_path: Path) -> None:
    scores = evaluate(Oracle(), store, tmp_path, choices=2)
    assert scores["self_knowledge_chance"] == 0.5 and scores["self_knowledge"] == 1.0


class Writer(Oracle):
    """Answers the layer-count questions correctly in words, and nothing else."""

    def write(self, context: str, max_new_tokens: int) -> str:
        if m := re.search(r"after cycle (\d+)\?", context):
            n = int(m[1])
            return f" After cycle {n}, I had {HISTORY[n][1]} layers."
        return " I would rather not say, 42 times over."


def test_free_generation_counts_the_first_new_number(store: Store, tmp_path: Path) -> None:
    scores = evaluate(Writer(), store, tmp_path, free_generation=True)
    numeric = 6 + 6 + 3  # layers, layer_added and kept questions
    assert scores["self_knowledge_generated"] == pytest.approx(6 / numeric)
    assert "self_knowledge_generated" not in evaluate(Oracle(), store, tmp_path)
    with pytest.raises(TypeError):
        evaluate(Oracle(), store, tmp_path, free_generation=True)
    assert first_new_number("After cycle 3 I had 4 layers", "after cycle 3?") == 4
    assert first_new_number("no idea", "after cycle 3?") is None


def test_no_record_is_an_error_not_a_score(tmp_path: Path) -> None:
    with Store.open(tmp_path / "empty") as empty, pytest.raises(ValueError, match="no training"):
        evaluate(Oracle(), empty, tmp_path)


def test_registered_through_its_entry_point() -> None:
    evaluator = load().registry().get("evaluator", "selfknowledge")
    assert isinstance(evaluator, SelfKnowledgeEvaluator)


def test_real_checkpoint(tmp_path: Path, store: Store) -> None:
    """The tiny workspace's barely trained checkpoint: numbers in [0, 1], and against a long
    record it scores near chance and fails."""
    ws = tiny_workspace(tmp_path / "ws")
    settings = load_settings(ws)
    with Store.open(ws) as own:
        checkpoint = own.latest_checkpoint()
        ctx = context(own, ws, {"free_generation": True})
        ctx.settings, ctx.cycle = settings, checkpoint.cycle
        scores = SelfKnowledgeEvaluator().evaluate(checkpoint.path, ctx)
    assert set(scores) >= {"self_knowledge", "self_knowledge_pass", "self_knowledge_generated"}
    for name in ("self_knowledge", "self_knowledge_pass", "self_knowledge_generated"):
        assert 0.0 <= scores[name] <= 1.0
    assert scores["self_knowledge_pass"] == 0.0  # one cycle: too few questions to pass
    ctx = context(store, ws)
    ctx.settings = settings
    scores = SelfKnowledgeEvaluator().evaluate(checkpoint.path, ctx)
    assert scores["self_knowledge_questions"] >= 20
    assert scores["self_knowledge"] < 0.6
    assert scores["self_knowledge_pass"] == 0.0
