"""Built-in `milestone` evaluator: does the model tie the identity's questions to its answers?

For each held-out probe the model scores the reference answer twice: after its own prompt and
after another probe's prompt (the next one, a fixed derangement). ``identity_score`` is the
share of probes whose answer is more likely after the right prompt: 0.5 is chance, 1.0 means
every answer is recognised as belonging to its question. It measures the Relation, not
fluency, and the probes are never trained on. ``probe_ppl`` is the perplexity of the answers
after their own prompts. Stage gates read both (``stages[].milestone``).
"""

from __future__ import annotations

import math
from pathlib import Path

from dte_aar.agent import Agent
from dte_aar.hookspecs import CycleContext, hookimpl
from dte_aar.train import resolve_device


def frame(kind: str, prompt: str, speaker: str) -> tuple[str, str]:
    """The text before the answer; completions continue the phrase, the rest are dialogue."""
    if kind == "completion":
        return prompt, ""
    return f"User: {prompt}\n{speaker}:", " "


def answer_nll(agent: Agent, context: str, answer: str) -> float:
    """Mean negative log-likelihood per token of ``answer`` following ``context``
    (:meth:`Agent.answer_score`, the rule every milestone evaluator shares)."""
    return agent.answer_score(context, answer).nll


class MilestoneEvaluator:
    name = "milestone"

    def evaluate(self, checkpoint: Path, ctx: CycleContext) -> dict[str, float]:
        probes = ctx.arena.probes
        if len(probes) < 2:
            raise ValueError(f"{ctx.arena.path}: needs at least 2 probes for identity_score")
        agent = Agent.load(
            checkpoint, ctx.workspace, device=resolve_device(ctx.settings.train.device)
        )
        return probe_scores(agent, probes, ctx.arena.identity.name)


def probe_scores(agent: Agent, probes: list, speaker: str) -> dict[str, float]:
    """identity_score (answers likelier after their own prompt than after the next probe's)
    and probe_ppl (the answers' perplexity after their own prompts); shared with `dte ablate`."""
    wins, matched = 0, []
    for i, probe in enumerate(probes):
        other = probes[(i + 1) % len(probes)]
        context, sep = frame(probe.kind, probe.prompt, speaker)
        wrong, _ = frame(probe.kind, other.prompt, speaker)
        right_nll = answer_nll(agent, context, sep + probe.reference)
        wrong_nll = answer_nll(agent, wrong, sep + probe.reference)
        matched.append(right_nll)
        wins += right_nll < wrong_nll
    return {
        "identity_score": wins / len(probes),
        "probe_ppl": math.exp(sum(matched) / len(matched)),
    }


@hookimpl
def register_evaluators(register) -> None:
    register(MilestoneEvaluator())
