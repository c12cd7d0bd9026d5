"""Built-in `concepts` evaluator, the stage-2 milestone: does the model know which answer
belongs to which question about its concepts (reservoir, membranes, P systems, hypergraphs...)?

Two kinds of multiple-choice items, each framed as the seed's dialogues are
("User: <question>\\nDeep Tree Echo: <answer>"):

- every ``concept`` probe: its held-out reference answer against the references of probes
  about *other* concepts (a probe belongs to the identity concept whose keywords it uses
  most), so the model must tell a reservoir answer from a membrane answer;
- every identity concept: "What is <name>?" answered by its description, against the other
  concepts' descriptions.

Options are ranked by how much the question raises their likelihood (pointwise mutual
information against an empty turn, see :mod:`dte_aar_plugins.phrases`), so a long, fluent
description does not win merely by being fluent. With ``choices`` options chance is
1/choices; ``concept_chance`` records it. ``concept_accuracy`` (the milestone) pools both
kinds; ``concept_questions`` and ``concept_definitions`` are the two parts.
``concept_accuracy_bar`` and ``concept_accuracy_pass`` record the bar each cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from dte_aar.arena import Concept, Probe
from dte_aar.hookspecs import CycleContext, PluginConfig, hookimpl
from dte_aar_plugins.milestone import frame
from dte_aar_plugins.phrases import (
    AgentScorer,
    Question,
    ScorerFactory,
    answered,
    bar,
    chance,
    distractors,
    share,
)


class ConceptsConfig(PluginConfig):
    """``[plugins.concepts]``.

    The bar: with 4 choices chance is 0.25; on the default arena's 25 items (19 concept
    probes, 6 concept definitions) a guesser reaches 0.5 with probability about 0.003
    (binomial tail), so passing means the model links questions to their answers. Measured:
    an untrained model 0.24, one tiny-preset layer trained 300 steps 0.36, 2-6 layers
    0.64-0.76.
    """

    threshold: float = Field(0.5, ge=0, le=1, description="concept_accuracy needed to pass")
    choices: int = Field(4, ge=2, description="options per question (chance 1/choices)")
    definitions: bool = Field(True, description="also ask for each identity concept's meaning")


def concept_of(text: str, concepts: Sequence[Concept]) -> int | None:
    """The index of the concept whose keywords ``text`` uses most (None: none, or a tie)."""
    low = text.lower()
    counts = [sum(low.count(k.lower()) for k in c.keywords) for c in concepts]
    best = max(counts, default=0)
    if best == 0 or counts.count(best) > 1:
        return None
    return counts.index(best)


def probe_questions(
    probes: Sequence[Probe], concepts: Sequence[Concept], speaker: str, k: int, seed: int
) -> list[Question]:
    """The concept probes as questions, wrong answers taken from other concepts' probes."""
    owner = [concept_of(f"{p.prompt} {p.reference}", concepts) for p in probes]
    pools = [
        [j for j, o in enumerate(owner) if mine is None or (o is not None and o != mine)]
        for mine in owner
    ]
    neutral, _ = frame("concept", "", speaker)
    out = []
    for p, others in zip(probes, distractors(len(probes), k, seed, pools), strict=True):
        context, sep = frame("concept", p.prompt, speaker)
        wrong = tuple(sep + probes[j].reference for j in others)
        out.append(Question(context, sep + p.reference, wrong, neutral))
    return out


def definition_questions(
    concepts: Sequence[Concept], speaker: str, k: int, seed: int
) -> list[Question]:
    """Each described concept asked "What is <name>?", its description against the others'."""
    described = [c for c in concepts if c.description]
    neutral, _ = frame("concept", "", speaker)
    out = []
    for c, others in zip(described, distractors(len(described), k, seed), strict=True):
        context, sep = frame("concept", f"What is {c.name}?", speaker)
        wrong = tuple(sep + described[j].description for j in others)
        out.append(Question(context, sep + c.description, wrong, neutral))
    return out


class ConceptsEvaluator:
    name = "concepts"
    Config = ConceptsConfig

    def __init__(self, scorer: ScorerFactory | None = None) -> None:
        self.scorer = scorer or AgentScorer.load

    def evaluate(self, checkpoint: Path, ctx: CycleContext) -> dict[str, float]:
        cfg = ConceptsConfig(**ctx.plugin_config(self.name))
        identity = ctx.arena.identity
        probes = [p for p in ctx.arena.probes if p.kind == "concept"]
        seed, k = ctx.settings.seed, cfg.choices
        asked = probe_questions(probes, identity.concepts, identity.name, k, seed)
        defined = definition_questions(identity.concepts, identity.name, k, seed)
        asked = asked if len(asked) > 1 else []
        defined = defined if cfg.definitions and len(defined) > 1 else []
        if not asked and not defined:
            raise ValueError(
                f"{ctx.arena.path}: needs 2 or more concept probes or described concepts"
            )
        scorer = self.scorer(checkpoint, ctx)
        wins = answered(scorer, asked + defined)
        out = {
            **bar("concept_accuracy", share(wins), cfg.threshold),
            "concept_chance": chance(asked + defined),
        }
        if asked:
            out["concept_questions"] = share(wins[: len(asked)])
        if defined:
            out["concept_definitions"] = share(wins[len(asked) :])
        return out


@hookimpl
def register_evaluators(register) -> None:
    register(ConceptsEvaluator())
