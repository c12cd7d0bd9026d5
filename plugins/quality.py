"""Built-in `quality` curator: cheap heuristics that catch what a young model writes badly.

Tuned for persona prose, dialogue turns and small Scheme programs: too short or too long;
looping repetition, measured in the spirit of Gopher's rules (Rae et al. 2021, appendix A:
duplicate lines and paragraphs, the most frequent 2-4-gram's share of the characters, the
share covered by repeated 5-10-grams); character garbage (U+FFFD, control characters,
mojibake, too few letters); invented words (a young model's "midottly"), measured as the
share of words found in the arena's own seed lexicon; and outputs cut off mid-sentence or
with open parentheses. The defaults keep all of the seed itself (a test holds them to that).
Each verdict says which checks failed.
"""

from __future__ import annotations

import functools
import itertools
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from dte_aar.hookspecs import CycleContext, PluginConfig, Sample, Verdict, hookimpl

Share = Annotated[float, Field(ge=0, le=1)]


class QualityConfig(PluginConfig):
    min_chars: int = Field(40, ge=1)
    max_chars: int = Field(6000, ge=1)
    min_words: int = Field(8, ge=1)
    # Gopher uses 0.30/0.30/0.20/0.20; Scheme repeats short lines like "(newline)", so a line
    # counts only with at least `line_min_word_chars` word characters.
    max_dup_lines: float = Field(0.3, ge=0, le=1, description="share of repeated lines")
    max_dup_paragraphs: float = Field(0.3, ge=0, le=1, description="share of repeated paras")
    max_dup_line_chars: float = Field(0.2, ge=0, le=1, description="chars in repeated lines")
    max_dup_paragraph_chars: float = Field(0.2, ge=0, le=1, description="chars in rep. paras")
    line_min_word_chars: int = Field(8, ge=0)
    # Character share of the most frequent n-gram (Gopher: 0.20, 0.18, 0.16).
    max_top_ngram_chars: dict[Annotated[int, Field(ge=2, le=4)], Share] = Field(
        default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16}
    )
    # Character share covered by n-grams seen more than once. Gopher's 0.15 down to 0.10 cut
    # seed dialogues that quote their own code (up to 0.14 at n=5, 0.12 at n=8).
    max_dup_ngram_chars: dict[Annotated[int, Field(ge=5, le=10)], Share] = Field(
        default_factory=lambda: {5: 0.22, 6: 0.21, 7: 0.2, 8: 0.19, 9: 0.18, 10: 0.17}
    )
    ngram_min_words: int = Field(
        40, ge=0, description="n-gram rules skip shorter texts: a short turn's shares are noise"
    )
    min_letter_ratio: float = Field(0.6, ge=0, le=1)
    max_bad_chars: int = Field(0, ge=0, description="U+FFFD, control and private-use chars")
    max_mojibake: int = Field(0, ge=0, description="UTF-8 read as cp1252 pairs like 'â€™'")
    min_known_words: float = Field(0.9, ge=0, le=1)
    truncation: bool = Field(True, description="reject texts that look cut off")
    truncation_min_words: int = Field(
        6, ge=1, description="a last line this long that lacks terminal punctuation is cut off"
    )


TOKEN = re.compile(r"\w+")
# UTF-8 lead byte read as Latin-1/cp1252 followed by a continuation byte read the same way.
MOJIBAKE = re.compile(
    "[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6"
    "\u02dc\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]"
)
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
LETTER = re.compile(r"[^\W\d_]")
ALNUM = re.compile(r"[^\W_]")
PARAGRAPH = re.compile(r"\n\s*\n")
ASCII_LETTERS = string.ascii_letters.encode()
ASCII_SPACE = string.whitespace.encode()
TERMINAL = frozenset(".!?…\"'”’)]}>*`~")
OPEN_ENDING = frozenset(",;:-–—([{")
SUFFIXES = ("s", "es", "ed", "d", "ing", "ly", "er", "ers", "est", "ness", "ment")


def tokens_of(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscores): the unit of the n-gram rules."""
    return TOKEN.findall(text.lower())


def words_of(text: str) -> list[str]:
    """The alphabetic tokens: what the known-word ratio counts."""
    return [t for t in tokens_of(text) if t.isalpha()]


def lexicon(texts: Iterable[str]) -> frozenset[str]:
    """Every word the seed uses: the yardstick for 'is this made of real words?'."""
    return frozenset(w for text in texts for w in words_of(text))


@functools.lru_cache(maxsize=1 << 16)
def is_known(word: str, known: frozenset[str]) -> bool:
    """In the lexicon, or an inflection of a word that is ("echoing" from "echo")."""
    if word in known:
        return True
    return any(
        word.endswith(s) and len(word) - len(s) >= 3 and word[: -len(s)] in known for s in SUFFIXES
    )


def measure(
    text: str,
    known: frozenset[str] = frozenset(),
    line_min_word_chars: int = 8,
    limits: dict[int, float] | None = None,
    min_ngram_words: int = 0,
) -> dict[str, float]:
    """The numbers the verdict is based on (exposed for tests, tuning and reports).

    The n-gram shares are left out for texts of fewer than `min_ngram_words` tokens.
    """
    tokens = tokens_of(text)
    alpha = [t for t in tokens if t.isalpha()]
    known_words = 1.0
    if alpha and known:
        unknown = [w for w in alpha if w not in known]
        known_words = 1 - sum(not is_known(w, known) for w in unknown) / len(alpha)
    visible, letters = _visible_and_letters(text)
    m: dict[str, float] = {
        "chars": len(text),
        "words": len(text.split()),
        "letter_ratio": letters / visible if visible else 0.0,
        "known_words": known_words,
        "bad_chars": bad_chars(text),
        "mojibake": len(MOJIBAKE.findall(text)),
    }
    m.update(repetition(text, tokens, line_min_word_chars, limits, min_ngram_words))
    return m


def _visible_and_letters(text: str) -> tuple[int, int]:
    """(non-space characters, letters); bytes.translate makes the ASCII case ~10x faster."""
    if text.isascii():
        b = text.encode("ascii")
        return len(b.translate(None, ASCII_SPACE)), len(b) - len(b.translate(None, ASCII_LETTERS))
    return len("".join(text.split())), len(LETTER.findall(text))


def bad_chars(text: str) -> int:
    """U+FFFD, C0/C1 controls other than whitespace, surrogates, private-use, unassigned."""
    count = len(CONTROL.findall(text))
    if not text.isascii():
        odd = ("Cs", "Co", "Cn")
        count += sum(
            text.count(c)
            for c in set(text)
            if ord(c) > 0x9F and (c == "\ufffd" or unicodedata.category(c) in odd)
        )
    return count


def _dup_share(parts: list[str]) -> tuple[float, float]:
    """(share of parts repeating an earlier one, share of their characters)."""
    if not parts:
        return 0.0, 0.0
    seen: set[str] = set()
    dup = dup_chars = 0
    for p in parts:
        if p in seen:
            dup += 1
            dup_chars += len(p)
        seen.add(p)
    return dup / len(parts), dup_chars / max(1, sum(map(len, parts)))


def repetition(
    text: str,
    tokens: list[str] | None = None,
    line_min_word_chars: int = 8,
    limits: dict[int, float] | None = None,
    min_ngram_words: int = 0,
) -> dict[str, float]:
    """Gopher's repetition measures: line/paragraph duplicates and n-gram character shares.

    Lines with fewer than `line_min_word_chars` letters or digits ("(newline)", ")))") do
    not count. With `limits` (n -> largest allowed `dup_n`) only what the verdict needs is
    counted: the duplicate n-gram share can only shrink as n grows (every position a
    repeated 6-gram covers, a repeated 5-gram covers too), so once `dup_n` is within every
    larger n's limit those get `dup_n` (an upper bound), and once one fails the rest are
    left out.
    """
    out: dict[str, float] = {}
    lines = [s for s in (ln.strip() for ln in text.splitlines()) if s]
    if len(set(lines)) < len(lines):  # only then is the per-line filter worth its cost
        lines = [s for s in lines if len(ALNUM.findall(s)) >= line_min_word_chars]
    out["dup_lines"], out["dup_line_chars"] = _dup_share(lines)
    paras = [p.strip() for p in PARAGRAPH.split(text) if p.strip()]
    out["dup_paragraphs"], out["dup_paragraph_chars"] = _dup_share(paras)
    tokens = tokens_of(text) if tokens is None else tokens
    out["ngram_words"] = len(tokens)
    if len(tokens) < min_ngram_words:
        return out
    lengths = [len(t) for t in tokens]
    total = sum(lengths) or 1
    count = 0
    for n in (2, 3, 4):
        grams = Counter(zip(*(tokens[k:] for k in range(n)), strict=False))
        top, count = grams.most_common(1)[0] if grams else ((), 0)
        out[f"top_{n}"] = count * sum(map(len, top)) / total if count > 1 else 0.0
    sizes = sorted(limits) if limits is not None else list(range(5, 11))
    if count <= 1:  # no 4-gram repeats, so no longer n-gram can
        out.update((f"dup_{n}", 0.0) for n in sizes)
        return out
    ends = list(itertools.accumulate(lengths, initial=0))
    for j, n in enumerate(sizes):
        share = out[f"dup_{n}"] = _dup_ngram_share(tokens, ends, n)
        if limits is None:
            continue
        if share > limits[n]:
            break
        if all(share <= limits[m] for m in sizes[j + 1 :]):
            out.update((f"dup_{m}", share) for m in sizes[j + 1 :])
            break
    return out


def _dup_ngram_share(tokens: list[str], ends: list[int], n: int) -> float:
    """Share of the token characters inside some n-gram that occurs more than once.

    ``ends`` are the prefix sums of the token lengths, so each covered stretch costs one
    subtraction however long it is.
    """
    grams = list(zip(*(tokens[k:] for k in range(n)), strict=False))
    counts = Counter(grams)
    if len(counts) == len(grams):
        return 0.0
    covered = reach = 0
    for i, g in enumerate(grams):
        if counts[g] > 1:
            start = max(i, reach)
            covered += ends[i + n] - ends[start]
            reach = i + n
    return covered / (ends[-1] or 1)


# --------------------------------------------------------------------------- truncation
def looks_like_code(text: str) -> bool:
    """Lisp-like code: many lines open with '(' or ';' (the arena's Scheme programs)."""
    lines = [ln.lstrip() for ln in text.splitlines() if ln.strip()]
    code = sum(ln.startswith(("(", ";", "'(")) for ln in lines)
    return bool(lines) and code / len(lines) >= 0.3


def paren_depth(code: str) -> int:
    """Net open parentheses/brackets outside strings and ';' comments (0 when balanced)."""
    depth = 0
    in_string = escaped = comment = False
    prev = "\n"
    for i, c in enumerate(code):
        if comment:
            comment = c != "\n"
        elif in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c == ";" and prev.isspace():  # "overflow; a" in a prose aside is no comment
            comment = True
        elif code[i - 2 : i] == "#\\":  # a character literal such as #\(
            pass
        elif c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        prev = c
    return depth


def truncation(text: str, min_words: int = 6, finish_reason: str | None = None) -> str | None:
    """Why ``text`` looks cut off (a length limit hit mid-output), or None.

    It reads the text: code with parentheses left open or an odd number of ``` fences; prose
    whose last line ends on a comma, colon or dash, or runs `min_words` words without terminal
    punctuation (a short last line such as a letter's signature "Deep Tree Echo" is fine).
    When the generator says it stopped at its token budget (``finish_reason`` "length"), prose
    must end on terminal punctuation: the signature exception is for texts that ended freely.
    """
    stripped = text.rstrip()
    if not stripped:
        return None
    if stripped.count("```") % 2:
        return "unclosed code fence"
    if looks_like_code(stripped):
        depth = paren_depth(stripped)
        return f"{depth} unclosed parentheses" if depth > 0 else None
    last = stripped[-1]
    if last in TERMINAL:
        return None
    if finish_reason == "length":
        return "cut at the token budget mid-sentence"
    if last in OPEN_ENDING:
        return f"ends on {last!r}"
    last_line = stripped.splitlines()[-1]
    if len(last_line.split()) >= min_words:
        return "ends mid-sentence"
    return None


# --------------------------------------------------------------------------- curator
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
        checks = rules(cfg)
        for sample in samples:
            yield judge(sample, cfg, self._lexicons[key], checks)


@dataclass(frozen=True)
class Rule:
    """One threshold on one measure; the reason is formatted only when it fails."""

    key: str
    limit: float
    floor: bool  # True: the value must reach the limit; False: it must not exceed it
    reason: str  # str.format template with {v} (the value) and {lim}
    ngram: bool = False  # applies only to texts with `ngram_min_words` words or more

    def failed(self, m: dict[str, float]) -> tuple[str, float] | None:
        v = m.get(self.key)
        if v is None or (v >= self.limit if self.floor else v <= self.limit):
            return None
        if self.floor:
            score = v / self.limit if self.limit else 0.0
        else:
            score = self.limit / v if v else 0.0
        return self.reason.format(v=v, lim=self.limit), score


def rules(cfg: QualityConfig) -> list[Rule]:
    rep = "repetitive ({{v:.0%}} {} > {{lim:.0%}})"
    out = [
        Rule("chars", cfg.min_chars, True, "too short ({v:.0f} < {lim} chars)"),
        Rule("chars", cfg.max_chars, False, "too long ({v:.0f} > {lim} chars)"),
        Rule("words", cfg.min_words, True, "too few words ({v:.0f} < {lim})"),
        Rule("dup_lines", cfg.max_dup_lines, False, rep.format("repeated lines")),
        Rule(
            "dup_line_chars", cfg.max_dup_line_chars, False, rep.format("chars in repeated lines")
        ),
        Rule("dup_paragraphs", cfg.max_dup_paragraphs, False, rep.format("repeated paragraphs")),
        Rule(
            "dup_paragraph_chars",
            cfg.max_dup_paragraph_chars,
            False,
            rep.format("chars in repeated paragraphs"),
        ),
    ]
    for n, lim in sorted(cfg.max_top_ngram_chars.items()):
        out.append(Rule(f"top_{n}", lim, False, rep.format(f"chars in the top {n}-gram"), True))
    for n, lim in sorted(cfg.max_dup_ngram_chars.items()):
        out.append(Rule(f"dup_{n}", lim, False, rep.format(f"chars in repeated {n}-grams"), True))
    out += [
        Rule(
            "bad_chars",
            cfg.max_bad_chars,
            False,
            "garbage characters ({v:.0f} replacement/control)",
        ),
        Rule("mojibake", cfg.max_mojibake, False, "garbage characters ({v:.0f} mojibake pairs)"),
        Rule("letter_ratio", cfg.min_letter_ratio, True, "garbage characters ({v:.0%} letters)"),
        Rule("known_words", cfg.min_known_words, True, "invented words ({v:.0%} known)"),
    ]
    return out


def failures(
    m: dict[str, float], cfg: QualityConfig, checks: list[Rule] | None = None
) -> list[tuple[str, float]]:
    """(reason, score) per failed check; a score in [0, 1) says how far off it is."""
    ngrams = m["ngram_words"] >= cfg.ngram_min_words
    found = (r.failed(m) for r in checks or rules(cfg) if ngrams or not r.ngram)
    return [f for f in found if f is not None]


def judge(
    sample: Sample,
    cfg: QualityConfig,
    known: frozenset[str] = frozenset(),
    checks: list[Rule] | None = None,
) -> Verdict:
    m = measure(
        sample.text,
        known,
        cfg.line_min_word_chars,
        cfg.max_dup_ngram_chars,
        cfg.ngram_min_words,
    )
    failed = failures(m, cfg, checks)
    if cfg.truncation and (
        cut := truncation(sample.text, cfg.truncation_min_words, sample.finish_reason)
    ):
        failed.append((f"truncated ({cut})", 0.5))
    if failed:
        score = min(score for _, score in failed)
        reason = "; ".join(r for r, _ in failed)
        return Verdict(sample.id, False, round(min(score, 0.99), 4), reason)
    reason = (
        f"ok: {m['chars']:.0f} chars, {m.get('dup_5', 0.0):.0%} in repeated 5-grams, "
        f"{m['letter_ratio']:.0%} letters, {m['known_words']:.0%} known words"
    )
    return Verdict(sample.id, True, 1.0, reason)


@hookimpl
def register_curators(register) -> None:
    register(QualityCurator())
