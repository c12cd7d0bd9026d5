"""Corpus policy: accumulate, never replace, and keep the real:synthetic mix in bounds.

The seed (and imports) stay in every cycle's training set. Generated text is added on top,
and a cap on the synthetic share keeps a run from drifting into training on its own echoes
(model-collapse work: replacing real data degrades each generation; accumulating does not).
"""

from __future__ import annotations

import math

from dte_aar.config import GenerateSettings

POLICY = "corpus_policy"  # the curator name recorded on verdicts this policy writes


def requests_per_generator(cfg: GenerateSettings, accepted: int) -> int:
    """How many samples each generator is asked for: a fixed count, or a multiple of the
    accepted corpus (the seed's plan: grow the corpus 1000x, then 100x), capped."""
    if cfg.corpus_multiple is None:
        return cfg.samples_per_cycle
    return min(cfg.max_samples_per_cycle, math.ceil(cfg.corpus_multiple * accepted))


def within_cap(real: int, synthetic: int, cap: float) -> bool:
    """May one more synthetic sample join a corpus of ``real`` + ``synthetic``?"""
    return (synthetic + 1) / (real + synthetic + 1) <= cap
