"""Built-in `quality` curator: cheap heuristics that catch what a young model writes badly.

Tuned for persona prose and small code: too short or too long, looping repetition,
character garbage (bytes the BPE decoded into noise) and invented words (a young model's
"midottly"), measured as the share of words found in the arena's own seed lexicon. The
defaults keep nearly all of the seed itself (a test holds them to that). Each verdict says
which checks failed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydantic import Field

from dte_aar.hookspecs import CycleContext, PluginConfig, Sample, Verdict, hookimpl


class QualityConfig(PluginConfig):
    min_chars: int = Field(40, ge=1)
    max_chars: int = Field(6000, ge=1)
    min_distinct_trigrams: float = Field(0.6, ge=0, le=1)
    min_letter_ratio: float = Field(0.6, ge=0, le=1)
    min_words: int = Field(8, ge=1)
    min_known_words: float = Field(0.95, ge=0, le=1)


WORD = re.compile(r"[A-Za-z]+")


def words_of(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def lexicon(texts: Iterable[str]) -> frozenset[str]:
    """Every word the seed uses: the yardstick for 'is this made of real words?'."""
    return frozenset(w for text in texts for w in words_of(text))


def measure(text: str, known: frozenset[str] = frozenset()) -> dict[str, float]:
    """The numbers the verdict is based on (exposed for tests and reports)."""
    words = text.split()
    alpha = words_of(text)
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    distinct = len(set(trigrams)) / len(trigrams) if trigrams else 1.0
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    return {
        "chars": len(text),
        "words": len(words),
        "distinct_trigrams": distinct,
        "letter_ratio": letters / len(visible) if visible else 0.0,
        "known_words": sum(w in known for w in alpha) / len(alpha) if alpha and known else 1.0,
    }


class QualityCurator:
    name = "quality"
    Config = QualityConfig

    def __init__(self) -> None:
        self._lexicons: dict[str, frozenset[str]] = {}

    def curate(self, samples: list[Sample], ctx: CycleContext) -> Iterable[Verdict]:
        cfg = QualityConfig(**ctx.plugin_config(self.name))
        key = str(ctx.arena.path)
        if key not in self._lexicons:
            self._lexicons[key] = lexicon(example.text for example in ctx.arena.seed)
        for sample in samples:
            yield judge(sample, cfg, self._lexicons[key])


def judge(sample: Sample, cfg: QualityConfig, known: frozenset[str] = frozenset()) -> Verdict:
    m = measure(sample.text, known)
    failures = []
    if m["chars"] < cfg.min_chars:
        failures.append(f"too short ({m['chars']:.0f} < {cfg.min_chars} chars)")
    if m["chars"] > cfg.max_chars:
        failures.append(f"too long ({m['chars']:.0f} > {cfg.max_chars} chars)")
    if m["words"] < cfg.min_words:
        failures.append(f"too few words ({m['words']:.0f} < {cfg.min_words})")
    if m["distinct_trigrams"] < cfg.min_distinct_trigrams:
        failures.append(f"repetitive ({m['distinct_trigrams']:.0%} distinct word trigrams)")
    if m["letter_ratio"] < cfg.min_letter_ratio:
        failures.append(f"garbage characters ({m['letter_ratio']:.0%} letters)")
    if m["known_words"] < cfg.min_known_words:
        failures.append(f"invented words ({m['known_words']:.0%} known)")
    score = min(
        1.0,
        m["distinct_trigrams"] / max(cfg.min_distinct_trigrams, 1e-9),
        m["letter_ratio"] / max(cfg.min_letter_ratio, 1e-9),
        m["chars"] / cfg.min_chars,
        m["known_words"] / max(cfg.min_known_words, 1e-9),
    )
    if failures:
        return Verdict(sample.id, False, round(score, 4), "; ".join(failures))
    reason = (
        f"ok: {m['chars']:.0f} chars, {m['distinct_trigrams']:.0%} distinct trigrams, "
        f"{m['letter_ratio']:.0%} letters, {m['known_words']:.0%} known words"
    )
    return Verdict(sample.id, True, round(score, 4), reason)


@hookimpl
def register_curators(register) -> None:
    register(QualityCurator())
