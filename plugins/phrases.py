"""Built-in `phrases` evaluator, the stage-1 milestone: does the model finish the identity's
phrases?

The arena's ``completion`` probes ("My name is Deep" -> " Tree Echo") are held out from
training, but their phrases live in the seed, so a model that has learned the seed's
collocations completes them. Three numbers, all in [0, 1]:

- ``phrase_completion`` (the milestone): the share of reference tokens the model would write
  itself, i.e. that are its greedy (argmax) choice given the prompt and the reference so
  far, averaged over probes. Partial credit, so it moves from the first layer on; chance is
  about 1/vocabulary, so anything clearly above 0 is learned.
- ``phrase_exact``: the share of probes whose whole reference is the greedy continuation.
- ``phrase_choice``: multiple choice among ``choices`` references (the right one and others
  drawn with a fixed seed, so every cycle asks the same questions); chance is 1/choices.
  Options are ranked by how much the prompt raises their likelihood (mean per-token
  log-likelihood after the prompt minus after end-of-text alone, i.e. pointwise mutual
  information, Holtzman et al. 2021), so a short, common reference does not win by being
  common.

``phrase_completion_bar`` and ``phrase_completion_pass`` (1.0 or 0.0) record the bar each
cycle. The model is reached only through :class:`Scorer`, so tests can stand an oracle in.

The scoring helpers here (:class:`Scorer`, :class:`AgentScorer`, :func:`answered`)
are shared with the `concepts` evaluator.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import Field

from dte_aar.agent import Agent, AnswerScore
from dte_aar.hookspecs import CycleContext, PluginConfig, hookimpl
from dte_aar.train import resolve_device

NEUTRAL = ""  # the context "nothing yet": end-of-text alone, where every document starts


class Scorer(Protocol):
    """What the milestone evaluators ask of a model (an oracle stands in for it in tests)."""

    def score(self, context: str, answer: str) -> AnswerScore: ...


class AgentScorer:
    """A checkpoint as a :class:`Scorer` (:meth:`Agent.answer_score`: one teacher-forced
    forward pass, after end-of-text, so ``NEUTRAL`` is the model's unconditional start)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    @classmethod
    def load(cls, checkpoint: Path, ctx: CycleContext) -> AgentScorer:
        device = resolve_device(ctx.settings.train.device)
        return cls(Agent.load(checkpoint, ctx.workspace, device=device))

    def score(self, context: str, answer: str) -> AnswerScore:
        return self.agent.answer_score(context, answer)


ScorerFactory = Callable[[Path, CycleContext], Scorer]


# --------------------------------------------------------------------------- multiple choice
@dataclass(frozen=True)
class Question:
    """A multiple-choice item: the right answer after ``context``, and the wrong ones."""

    context: str
    right: str
    wrong: tuple[str, ...]
    neutral: str = NEUTRAL  # the context the answers' prior likelihood is read after


def distractors(
    n: int, k: int, seed: int, pools: Sequence[Sequence[int]] | None = None
) -> list[list[int]]:
    """For each of ``n`` items, ``k - 1`` other items' indices, fixed by ``seed``.

    ``pools[i]`` lists the preferred candidates for item ``i`` (say, other concepts'); when it
    holds too few, any other item fills up.
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        preferred = [j for j in (pools[i] if pools else []) if j != i]
        picked = rng.sample(preferred, min(k - 1, len(preferred)))
        rest = [j for j in range(n) if j != i and j not in picked]
        picked += rng.sample(rest, min(k - 1 - len(picked), len(rest)))
        out.append(picked)
    return out


def gain(
    scorer: Scorer,
    context: str,
    answer: str,
    prior: dict[tuple[str, str], float],
    neutral: str = NEUTRAL,
) -> float:
    """How much ``context`` raises ``answer``'s mean per-token log-likelihood (PMI)."""
    if (neutral, answer) not in prior:
        prior[neutral, answer] = scorer.score(neutral, answer).nll
    return prior[neutral, answer] - scorer.score(context, answer).nll


def answered(scorer: Scorer, questions: Sequence[Question]) -> list[bool]:
    """Per question: does its right answer gain more from the context than every wrong one?
    (A tie counts as wrong, so a model that cannot tell them apart scores 0, not chance.)"""
    prior: dict[tuple[str, str], float] = {}
    out = []
    for q in questions:
        right = gain(scorer, q.context, q.right, prior, q.neutral)
        out.append(all(right > gain(scorer, q.context, w, prior, q.neutral) for w in q.wrong))
    return out


def chance(questions: Sequence[Question]) -> float:
    """The accuracy of guessing."""
    return sum(1 / (1 + len(q.wrong)) for q in questions) / max(1, len(questions))


def share(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def bar(metric: str, value: float, threshold: float) -> dict[str, float]:
    """The metric with its bar and whether it passed, as every milestone records them."""
    return {
        metric: value,
        f"{metric}_bar": threshold,
        f"{metric}_pass": float(value >= threshold),
    }


# --------------------------------------------------------------------------- evaluator
class PhrasesConfig(PluginConfig):
    """``[plugins.phrases]``.

    The bar: the completion probes are seed collocations ("ridge regression", "cons cell",
    "metacircular evaluator") that a model which has learned its seed writes itself. On the
    default arena an untrained model scores 0.04, one tiny-preset layer trained 300 steps
    0.30 and 2-6 such layers 0.31-0.37; a quarter of the reference tokens is what the first
    layer can reach, and far above what guessing does.
    """

    threshold: float = Field(
        0.25, ge=0, le=1, description="phrase_completion needed to pass (share of tokens)"
    )
    choices: int = Field(4, ge=2, description="options per multiple-choice question")


class PhrasesEvaluator:
    name = "phrases"
    Config = PhrasesConfig

    def __init__(self, scorer: ScorerFactory | None = None) -> None:
        self.scorer = scorer or AgentScorer.load

    def evaluate(self, checkpoint: Path, ctx: CycleContext) -> dict[str, float]:
        cfg = PhrasesConfig(**ctx.plugin_config(self.name))
        probes = [p for p in ctx.arena.probes if p.kind == "completion"]
        if len(probes) < 2:
            raise ValueError(f"{ctx.arena.path}: needs at least 2 completion probes")
        scorer = self.scorer(checkpoint, ctx)
        scores = [scorer.score(p.prompt, p.reference) for p in probes]
        others = distractors(len(probes), cfg.choices, ctx.settings.seed)
        questions = [
            Question(p.prompt, p.reference, tuple(probes[j].reference for j in js))
            for p, js in zip(probes, others, strict=True)
        ]
        completion = sum(s.accuracy for s in scores) / len(scores)
        return {
            **bar("phrase_completion", completion, cfg.threshold),
            "phrase_exact": share([all(s.hits) for s in scores]),
            "phrase_choice": share(answered(scorer, questions)),
        }


@hookimpl
def register_evaluators(register) -> None:
    register(PhrasesEvaluator())
