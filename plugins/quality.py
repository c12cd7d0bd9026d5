"""Built-in `quality` curator: cheap heuristics that catch what a young model writes badly.

Tuned for persona prose and small code: too short or too long, looping repetition, and
character garbage (bytes the BPE decoded into noise). Each verdict says which checks failed.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import Field

from dte_aar.hookspecs import CycleContext, PluginConfig, Sample, Verdict, hookimpl


class QualityConfig(PluginConfig):
    min_chars: int = Field(40, ge=1)
    max_chars: int = Field(6000, ge=1)
    min_distinct_trigrams: float = Field(0.6, ge=0, le=1)
    min_letter_ratio: float = Field(0.7, ge=0, le=1)
    min_words: int = Field(8, ge=1)


def measure(text: str) -> dict[str, float]:
    """The numbers the verdict is based on (exposed for tests and reports)."""
    words = text.split()
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    distinct = len(set(trigrams)) / len(trigrams) if trigrams else 1.0
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    return {
        "chars": len(text),
        "words": len(words),
        "distinct_trigrams": distinct,
        "letter_ratio": letters / len(visible) if visible else 0.0,
    }


class QualityCurator:
    name = "quality"
    Config = QualityConfig

    def curate(self, samples: list[Sample], ctx: CycleContext) -> Iterable[Verdict]:
        cfg = QualityConfig(**ctx.plugin_config(self.name))
        for sample in samples:
            yield judge(sample, cfg)


def judge(sample: Sample, cfg: QualityConfig) -> Verdict:
    m = measure(sample.text)
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
    score = min(
        1.0,
        m["distinct_trigrams"] / max(cfg.min_distinct_trigrams, 1e-9),
        m["letter_ratio"] / max(cfg.min_letter_ratio, 1e-9),
        m["chars"] / cfg.min_chars,
    )
    if failures:
        return Verdict(sample.id, False, round(score, 4), "; ".join(failures))
    reason = (
        f"ok: {m['chars']:.0f} chars, {m['distinct_trigrams']:.0%} distinct trigrams, "
        f"{m['letter_ratio']:.0%} letters"
    )
    return Verdict(sample.id, True, round(score, 4), reason)


@hookimpl
def register_curators(register) -> None:
    register(QualityCurator())
