"""Built-in `persona` evaluator, the stage-3 milestone: does what the model writes sound like
the persona?

The model answers ``samples`` of the arena's prompts, framed as a user turn with no style
example to lean on, sampled with fixed seeds (the same prompts and seeds every cycle, so
cycles differ only by the model). Each reply is checked three ways:

- on identity: its embedding clears the `identity` curator's calibrated threshold (the same
  embedder, calibration and ``[plugins.identity]`` settings the curator uses, so "consistent"
  means what curation means by it);
- in the persona's voice: it speaks in the first person ("I", "my", ... as whole words;
  ``voice`` sets the words). The arena's self-reference phrases are no test of voice: they
  include topic words ("reservoir", "tree"), and a first-layer model strings those together
  in the third person;
- readable: the `quality` curator's checks keep it (its ``[plugins.quality]`` settings, with
  the truncation check off, since replies stop at the evaluator's token budget, and a
  stricter ``min_known_words``). Without it a young model's salad of identity words would
  count as the persona: on the default arena such replies from 1-5 layer tiny models have a
  median of 0.94 seed-lexicon words (20-33% reach 0.97), the held-out probe answers 1.0
  (91% reach 0.97, the 10th percentile is 0.973).

``persona_consistency`` (the milestone) is the share of replies that pass all three; the
parts are ``persona_identity``, ``persona_first_person`` and ``persona_readable``, and
``persona_identity_score`` is the mean similarity. ``persona_consistency_bar`` and
``persona_consistency_pass`` record the bar each cycle. The model is reached only through
:class:`Writer`, so tests can stand fixed texts in.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from pydantic import Field

from dte_aar.agent import Agent, SamplingParams
from dte_aar.chat_template import format_prompt, reply_only, stop_sequences
from dte_aar.hookspecs import CycleContext, PluginConfig, Sample, hookimpl
from dte_aar.train import resolve_device
from dte_aar_plugins.identity import IdentityConfig, IdentityCurator
from dte_aar_plugins.phrases import bar, share
from dte_aar_plugins.quality import QualityConfig, judge, lexicon


class PersonaConfig(PluginConfig):
    """``[plugins.persona]``; temperature and top-k come from ``[generate]``.

    The bar: on the default arena the held-out probe answers, written in the persona's
    voice, score 0.68 (concept answers) to 0.92 (answers about itself), the seed's dialogue
    replies 0.83, off-identity prose 0.0, and 1-6 layer tiny models trained 300 steps a
    cycle 0.06-0.17 (fluent-looking salad of identity words, caught by ``min_known_words``).
    Half is between the two.
    """

    threshold: float = Field(0.5, ge=0, le=1, description="persona_consistency needed to pass")
    samples: int = Field(16, ge=1, description="replies sampled")
    max_new_tokens: int = Field(64, ge=8, description="tokens per reply")
    batch_size: int = Field(16, ge=1, description="replies decoded together")
    readable: bool = Field(True, description="count only replies the quality checks keep")
    min_known_words: float = Field(
        0.97, ge=0, le=1, description="share of a reply's words the seed uses (readability)"
    )
    voice: list[str] = Field(
        default_factory=lambda: ["I", "me", "my", "mine", "myself"],
        min_length=1,
        description="words that mark the persona speaking (first person)",
    )


class Writer(Protocol):
    """What the persona evaluator asks of a model: one reply per (prompt, seed)."""

    def write(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[str]: ...


class AgentWriter:
    """A checkpoint as a :class:`Writer`: batched, seeded sampling of the persona's reply."""

    def __init__(self, agent: Agent, params: SamplingParams, speaker: str, batch_size: int):
        self.agent, self.params, self.speaker, self.batch_size = agent, params, speaker, batch_size

    @classmethod
    def load(cls, checkpoint: Path, ctx: CycleContext) -> AgentWriter:
        cfg = PersonaConfig(**ctx.plugin_config("persona"))
        g = ctx.settings.generate
        params = SamplingParams(
            max_new_tokens=cfg.max_new_tokens,
            temperature=g.temperature,
            top_k=g.top_k or None,
            stop=stop_sequences(),
        )
        agent = Agent.load(
            checkpoint, ctx.workspace, device=resolve_device(ctx.settings.train.device)
        )
        return cls(agent, params, ctx.arena.identity.name, cfg.batch_size)

    def write(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[str]:
        framed = [format_prompt(p, None, self.speaker) for p in prompts]
        out: list[str] = []
        for i in range(0, len(framed), self.batch_size):
            part = slice(i, i + self.batch_size)
            done = self.agent.generate_batch(framed[part], self.params, seeds[part])
            out += [reply_only(c.text) for c in done]
        return out


WriterFactory = Callable[[Path, CycleContext], Writer]


def any_of(phrases: Sequence[str]) -> re.Pattern[str]:
    """Any phrase as whole words; case-blind except one-letter ones ("I", not the "i" of
    ``(for i ...)``)."""
    parts = [
        re.escape(p) if len(p) == 1 else f"(?i:{re.escape(p)})"
        for p in sorted(phrases, key=len, reverse=True)
    ]
    return re.compile(rf"(?<!\w)(?:{'|'.join(parts)})(?!\w)")


def prompts_and_seeds(prompts: Sequence[str], n: int, seed: int) -> tuple[list[str], list[int]]:
    """``n`` prompts (each once before any repeats) and a seed for each, fixed by ``seed``."""
    rng = random.Random(f"persona:{seed}")
    order: list[str] = []
    while len(order) < n:
        order += rng.sample(list(prompts), min(len(prompts), n - len(order)))
    return order, [rng.randrange(2**31) for _ in order]


def persona_checks(texts: Sequence[str], ctx: CycleContext, cfg: PersonaConfig) -> dict[str, float]:
    """The milestone's numbers for replies ``texts`` (they need not come from a model)."""
    if not texts:
        raise ValueError("no replies to judge")
    id_cfg = IdentityConfig(**ctx.plugin_config("identity"))
    embedder, cal = IdentityCurator().state(ctx, id_cfg)
    threshold = cal.threshold if id_cfg.threshold is None else id_cfg.threshold
    scores = cal.scores(embedder.embed(list(texts)))
    on_identity = [bool(s >= threshold) for s in scores]
    pattern = any_of(cfg.voice)
    voiced = [bool(pattern.search(t)) for t in texts]
    q_cfg = QualityConfig(
        **{
            **ctx.plugin_config("quality"),
            "truncation": False,
            "min_known_words": cfg.min_known_words,
        }
    )
    known = lexicon(example.text for example in ctx.arena.seed)
    readable = [
        judge(Sample(i, t, "generated", None, None, ""), q_cfg, known).keep
        for i, t in enumerate(texts)
    ]
    consistent = [
        a and b and (c or not cfg.readable)
        for a, b, c in zip(on_identity, voiced, readable, strict=True)
    ]
    return {
        **bar("persona_consistency", share(consistent), cfg.threshold),
        "persona_identity": share(on_identity),
        "persona_identity_score": float(sum(scores) / len(scores)),
        "persona_first_person": share(voiced),
        "persona_readable": share(readable),
    }


class PersonaEvaluator:
    name = "persona"
    Config = PersonaConfig

    def __init__(self, writer: WriterFactory | None = None) -> None:
        self.writer = writer or AgentWriter.load

    def evaluate(self, checkpoint: Path, ctx: CycleContext) -> dict[str, float]:
        cfg = PersonaConfig(**ctx.plugin_config(self.name))
        prompts, seeds = prompts_and_seeds(ctx.arena.prompts, cfg.samples, ctx.settings.seed)
        texts = self.writer(checkpoint, ctx).write(prompts, seeds)
        return persona_checks(texts, ctx, cfg)


@hookimpl
def register_evaluators(register) -> None:
    register(PersonaEvaluator())
