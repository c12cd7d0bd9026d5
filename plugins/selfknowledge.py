"""Built-in `selfknowledge` evaluator: does the model know its own training record? (stage 4)

The questions come from the store as of the checkpoint's cycle (:mod:`dte_aar.self_record`):
how many layers it had after a cycle, which cycle added a layer, which stage a cycle trained
in, how many candidates the curators kept, which way a metric moved. Each is multiple
choice: the model scores its first-person reply with the true answer and with each
same-type distractor ("After cycle 17 I had 18 layers." against 16, 19, 20), after the
question in the dialogue frame the probes use. A question counts as right only when the true
reply is strictly likelier than every distractor (a tie is wrong), so guessing scores about
``self_knowledge_chance`` (1/4 with the default four options, 1/3 for the trend questions).

``self_knowledge`` is the share right; ``self_knowledge_pass`` is 1.0 when it reaches
``threshold`` over at least ``min_questions`` questions. The default bar of 0.6 sits far
above chance: a guesser gets 12 or more of 20 four-way questions right with probability
about 0.001 (17 of 27, the count by stage 4 with the defaults: 0.00006), while a model that
learned its record clears it with room for slips. Below 12 questions (the first cycles) a
pass would be luck, so none counts. Optionally the numeric questions are also asked
open-ended (greedy), and ``self_knowledge_generated`` is the share of replies whose first
new number is the true one.

The model is reached through the small :class:`Scorer` (and :class:`Writer`) protocols, so
tests can put an oracle or an adversary in its place.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import Field

from dte_aar.agent import Agent
from dte_aar.chat_template import stop_sequences
from dte_aar.hookspecs import CycleContext, PluginConfig, hookimpl
from dte_aar.self_record import Question, self_questions, training_record
from dte_aar.train import resolve_device
from dte_aar_plugins.milestone import answer_nll, frame

NUMERIC = ("layers", "layer_added", "kept")


class SelfKnowledgeConfig(PluginConfig):
    threshold: float = Field(0.6, gt=0, le=1, description="pass at this share right or more")
    choices: int = Field(4, ge=2, le=8, description="options per question, the true one included")
    per_kind: int = Field(6, ge=1, description="questions per kind of fact, spread over the run")
    min_questions: int = Field(12, ge=1, description="fewer questions than this never pass")
    free_generation: bool = Field(False, description="also ask the numeric questions open-ended")
    max_new_tokens: int = Field(24, gt=0, description="tokens per open-ended reply")


@runtime_checkable
class Scorer(Protocol):
    def nll(self, context: str, answer: str) -> float:
        """Mean negative log-likelihood per token of ``answer`` after ``context``."""
        ...


@runtime_checkable
class Writer(Protocol):
    def write(self, context: str, max_new_tokens: int) -> str:
        """A greedy reply to ``context``."""
        ...


class AgentModel:
    """A checkpoint as both a scorer and a writer."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def nll(self, context: str, answer: str) -> float:
        return answer_nll(self.agent, context, answer)

    def write(self, context: str, max_new_tokens: int) -> str:
        stop = (*stop_sequences(), "\n")
        return self.agent.generate(context, max_new_tokens, temperature=0, stop=stop).text


def load_agent(checkpoint: Path, ctx: CycleContext) -> AgentModel:
    device = resolve_device(ctx.settings.train.device)
    return AgentModel(Agent.load(checkpoint, ctx.workspace, device=device))


def context_for(question: Question, speaker: str) -> tuple[str, str]:
    """The dialogue frame the milestone probes use, and the separator the reply starts with."""
    return frame("self", question.prompt, speaker)


def ask(questions: Sequence[Question], scorer: Scorer, speaker: str) -> list[bool]:
    """Per question: is the true reply strictly likelier than every distractor?"""
    right = []
    for q in questions:
        context, sep = context_for(q, speaker)
        true, *wrong = (scorer.nll(context, sep + reply) for reply in q.replies())
        right.append(all(true < w for w in wrong))
    return right


def first_new_number(reply: str, prompt: str) -> int | None:
    """The first integer in ``reply`` that the question did not already say."""
    said = set(re.findall(r"\d+", prompt))
    return next((int(n) for n in re.findall(r"\d+", reply) if n not in said), None)


def written_right(
    questions: Sequence[Question], writer: Writer, speaker: str, max_new_tokens: int
) -> list[bool]:
    """Per numeric question: does the open-ended reply give the true number first?"""
    right = []
    for q in questions:
        if q.kind not in NUMERIC:
            continue
        context, _ = context_for(q, speaker)
        answer = int(q.answer.split()[0])
        reply = writer.write(context, max_new_tokens)
        if str(answer) in re.findall(r"\d+", q.prompt):  # the question says it: just ask for it
            right.append(str(answer) in re.findall(r"\d+", reply))
        else:
            right.append(first_new_number(reply, q.prompt) == answer)
    return right


class SelfKnowledgeEvaluator:
    name = "selfknowledge"
    Config = SelfKnowledgeConfig

    def __init__(self, load: Callable[[Path, CycleContext], Scorer] = load_agent) -> None:
        self.load = load

    def evaluate(self, checkpoint: Path, ctx: CycleContext) -> dict[str, float]:
        cfg = SelfKnowledgeConfig(**ctx.plugin_config(self.name))
        record = training_record(ctx.store, ctx.cycle)
        questions = self_questions(record, cfg.choices, cfg.per_kind)
        if not questions:
            raise ValueError(f"cycle {ctx.cycle}: no training record to ask about yet")
        model = self.load(checkpoint, ctx)
        speaker = ctx.arena.identity.name
        right = ask(questions, model, speaker)
        share = sum(right) / len(right)
        passed = len(right) >= cfg.min_questions and share >= cfg.threshold
        scores = {
            "self_knowledge": share,
            "self_knowledge_bar": cfg.threshold,  # with at least min_questions asked
            "self_knowledge_pass": float(passed),
            "self_knowledge_chance": sum(1 / len(q.options()) for q in questions) / len(questions),
            "self_knowledge_questions": float(len(questions)),
        }
        if cfg.free_generation:
            if not isinstance(model, Writer):
                raise TypeError(f"{type(model).__name__} cannot write: free_generation needs it")
            written = written_right(questions, model, speaker, cfg.max_new_tokens)
            if written:
                scores["self_knowledge_generated"] = sum(written) / len(written)
        return scores


@hookimpl
def register_evaluators(register) -> None:
    register(SelfKnowledgeEvaluator())
