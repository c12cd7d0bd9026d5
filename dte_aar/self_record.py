"""The agent's own training record, read from the store and told in the first person.

Stage 4 of the seed asks for a model that "can reason about its own processes". The store
knows those processes exactly: which cycle added each layer, which stage each cycle trained
in, what the curators kept and why they rejected the rest, how loss, held-out perplexity and
identity score moved. This module turns that into

- a :class:`Record` (:func:`training_record`), plain facts, no torch;
- first-person texts for the corpus (:func:`record_texts`, :func:`record_samples`), phrased
  with deterministic, seed-chosen variety so the corpus is not one sentence repeated;
- multiple-choice questions with the store's answer and same-type distractors
  (:func:`self_questions`), for the ``selfknowledge`` milestone evaluator.

Every text is anchored to a cycle number ("After cycle 17 I had 18 layers"), so it stays
true for good: the packed token files are append-only, so a text once trained on can never
be taken back, and an unanchored "I have 17 layers now" would contradict the next cycle's.
A cycle's text depends only on that cycle and the ones before it, so it is the same whichever
later cycle writes it, and its ``origin`` key makes writing it again a no-op.

``training_record(store, n)`` is what the agent can know while it trains in cycle ``n``:
the structure (stage, layers, curation) of every cycle up to ``n``, fixed before a cycle
trains, and the outcomes (metrics) of the committed cycles before ``n``. So the texts the
cycle writes before training, the questions the evaluator asks right after it, and a later
``dte evaluate`` of the same checkpoint all see the same facts.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from dte_aar.config import default_stages
from dte_aar.corpus import POLICY

if TYPE_CHECKING:
    from dte_aar.store import Store

SOURCE = "self"  # samples.source of record texts
ORIGIN = "self-record"  # samples.origin prefix: self-record/{summary,cycle,outcome}/NNNN

# Metrics the record follows, with how the agent names them and how it writes the value.
TRACKED: dict[str, tuple[str, str]] = {
    "train_loss": ("training loss", "{:.2f}"),
    "heldout_ppl": ("held-out perplexity", "{:.1f}"),
    "identity_score": ("identity score", "{:.2f}"),
    "self_knowledge": ("self-knowledge score", "{:.2f}"),
}
FLAT = 0.02  # relative change below which a metric "stayed about the same"
DIRECTIONS = {"down": "went down", "up": "went up", "flat": "stayed about the same"}


# --------------------------------------------------------------------------- the record
class CuratorTally(BaseModel):
    curator: str
    kept: int
    rejected: int
    top_reason: str | None = None  # the commonest kind of rejection ("repetitive", ...)


class CycleFacts(BaseModel):
    n: int
    stage: int  # 1-based index into the run's stages
    stage_name: str
    layers: int  # depth after this cycle's training
    grew: list[int] = Field(default_factory=list)  # layer numbers added in this cycle
    stage_start: bool = False  # the first cycle of its stage
    committed: bool = False  # status done: its metrics are final
    judged: int = 0  # candidates the curators decided on
    kept: int = 0
    curators: list[CuratorTally] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)  # committed, before upto_cycle


class Trend(BaseModel):
    name: str
    first_cycle: int
    first: float
    last_cycle: int
    last: float
    direction: Literal["down", "up", "flat"]


class Record(BaseModel):
    upto_cycle: int
    layers: int = 0  # depth now (after the last cycle in the record)
    stage_name: str | None = None  # the stage now
    stage_names: list[str] = Field(default_factory=list)  # every configured stage, in order
    cycles: list[CycleFacts] = Field(default_factory=list)
    layer_added: dict[int, int] = Field(default_factory=dict)  # layer -> cycle it was added in
    trends: dict[str, Trend] = Field(default_factory=dict)

    def cycle(self, n: int) -> CycleFacts | None:
        return next((c for c in self.cycles if c.n == n), None)


def training_record(store: Store, upto_cycle: int) -> Record:
    """What the agent can know while training in ``upto_cycle``, exactly as the store holds
    it: cycles up to it, and the metrics of committed cycles before it."""
    rows = [r for r in store.cycles() if r["n"] <= upto_cycle]
    names_by_run = _stage_names(store)
    default_names = [s.name for s in default_stages()]
    latest_names = names_by_run.get(rows[-1]["run_id"]) if rows else None
    metrics = {name: store.metric_by_cycle(name) for name in TRACKED}
    judged = _judged(store, upto_cycle)
    tallies = _tallies(store, upto_cycle)
    cycles: list[CycleFacts] = []
    layer_added: dict[int, int] = {}
    prev_layers, prev_stage = 0, None
    for row in rows:
        n, layers, stage = row["n"], int(row["layers"] or 0), int(row["stage"] or 1)
        names = names_by_run.get(row["run_id"]) or latest_names or default_names
        grew = list(range(prev_layers + 1, layers + 1))
        for layer in grew:
            layer_added[layer] = n
        for layer in [k for k in layer_added if k > layers]:  # a rollback drops layers
            del layer_added[layer]
        committed = row["status"] == "done"
        final = committed and n < upto_cycle
        kept, total = judged.get(n, (0, 0))
        cycles.append(
            CycleFacts(
                n=n,
                stage=stage,
                stage_name=names[stage - 1] if stage <= len(names) else f"stage {stage}",
                layers=layers,
                grew=grew,
                stage_start=stage != prev_stage,
                committed=committed,
                judged=total,
                kept=kept,
                curators=tallies.get(n, []),
                metrics={
                    name: values[n] for name, values in metrics.items() if final and n in values
                },
            )
        )
        prev_layers, prev_stage = layers, stage
    last = cycles[-1] if cycles else None
    return Record(
        upto_cycle=upto_cycle,
        layers=last.layers if last else 0,
        stage_name=last.stage_name if last else None,
        stage_names=latest_names or default_names,
        cycles=cycles,
        layer_added=layer_added,
        trends=_trends(cycles),
    )


def _stage_names(store: Store) -> dict[int, list[str]]:
    """Each run's configured stage names, from the settings it recorded."""
    out: dict[int, list[str]] = {}
    for run_id, settings in store.db.execute("select id, settings from runs"):
        try:
            stages = json.loads(settings or "{}").get("stages") or []
            out[run_id] = [str(s["name"]) for s in stages]
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    return out


def _judged(store: Store, upto: int) -> dict[int, tuple[int, int]]:
    """(kept, judged) per cycle: decided samples that at least one curator saw."""
    out: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for cycle, status, count in store.db.execute(
        "select s.cycle, s.status, count(*) from samples s "
        "where s.cycle <= ? and s.status in ('accepted', 'rejected') "
        "and exists (select 1 from verdicts v where v.sample_id = s.id) "
        "group by s.cycle, s.status",
        [upto],
    ):
        out[cycle][0] += count if status == "accepted" else 0
        out[cycle][1] += count
    return {c: (k, t) for c, (k, t) in out.items()}


def _tallies(store: Store, upto: int) -> dict[int, list[CuratorTally]]:
    counts: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
    for cycle, curator, keep, count in store.db.execute(
        "select cycle, curator, keep, count(*) from verdicts where cycle <= ? "
        "group by cycle, curator, keep order by cycle, curator",
        [upto],
    ):
        counts[(cycle, curator)][0 if keep else 1] += count
    reasons: dict[tuple[int, str], Counter[str]] = defaultdict(Counter)
    for cycle, curator, reason in store.db.execute(
        "select cycle, curator, reason from verdicts where cycle <= ? and keep = 0 order by id",
        [upto],
    ):
        if kind := reason_kind(reason or ""):
            reasons[(cycle, curator)][kind] += 1
    out: dict[int, list[CuratorTally]] = defaultdict(list)
    for (cycle, curator), (kept, rejected) in sorted(counts.items()):
        common = reasons[(cycle, curator)].most_common(1)
        top = common[0][0] if common else None
        out[cycle].append(
            CuratorTally(curator=curator, kept=kept, rejected=rejected, top_reason=top)
        )
    return dict(out)


def reason_kind(reason: str) -> str:
    """The kind of a verdict's reason, without its numbers: "repetitive (40% ...)" ->
    "repetitive", "near-duplicate of sample 12 (...)" -> "near-duplicate of sample"."""
    head = re.split(r"[(;:]|\s\S*\d", reason, maxsplit=1)[0].strip()
    return re.sub(r"(\s+(of|the|a|an|at|than))+$", "", head).strip()


def _trends(cycles: Sequence[CycleFacts]) -> dict[str, Trend]:
    out = {}
    for name in TRACKED:
        series = [(c.n, c.metrics[name]) for c in cycles if name in c.metrics]
        if len(series) < 2:
            continue
        (c0, v0), (c1, v1) = series[0], series[-1]
        change = (v1 - v0) / abs(v0) if v0 else (v1 - v0)
        direction = "flat" if abs(change) < FLAT else ("down" if v1 < v0 else "up")
        out[name] = Trend(
            name=name, first_cycle=c0, first=v0, last_cycle=c1, last=v1, direction=direction
        )
    return out


# --------------------------------------------------------------------------- texts
def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _and(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + f" and {items[-1]}"


def _value(name: str, value: float) -> str:
    return TRACKED[name][1].format(value)


def _curator(name: str) -> str:
    return "my corpus policy" if name == POLICY else f"the {name} curator"


class _Writer:
    """Picks one phrasing per fact, deterministically from (seed, text, fact)."""

    def __init__(self, seed: int, key: str) -> None:
        self.rng = random.Random(f"{seed}:{key}")

    def say(self, variants: Sequence[str], **facts: Any) -> str:
        return self.rng.choice(variants).format(**facts)


def _cycle_text(c: CycleFacts, prev: CycleFacts | None, seed: int) -> str:
    """What happened in one cycle: growth, depth, stage, curation."""
    w = _Writer(seed, f"cycle:{c.n}")
    f = {"n": c.n, "stage": c.stage_name, "layers": count(c.layers, "layer")}
    out = []
    if len(c.grew) == 1:
        f["ord"] = ordinal(c.grew[0])
        out.append(
            w.say(
                [
                    "My {ord} layer was added in cycle {n}, while I was in my {stage} stage.",
                    "In cycle {n}, during my {stage} stage, I grew my {ord} layer.",
                    "Cycle {n} gave me my {ord} layer; I was in my {stage} stage then.",
                ],
                **f,
            )
        )
    elif c.grew:
        f["ords"] = _and([ordinal(k) for k in c.grew])
        out.append(
            w.say(
                [
                    "My {ords} layers were added in cycle {n}, while I was in my {stage} stage.",
                    "In cycle {n}, during my {stage} stage, I grew my {ords} layers.",
                ],
                **f,
            )
        )
    elif prev is not None and c.layers < prev.layers:
        out.append(w.say(["In cycle {n} I went back to {layers}."], **f))
    else:
        out.append(
            w.say(
                [
                    "In cycle {n} I did not grow; I kept training my {layers}.",
                    "Cycle {n} added no layer: I stayed at {layers} and trained on.",
                ],
                **f,
            )
        )
    out.append(
        w.say(
            [
                "After cycle {n} I had {layers}.",
                "By the end of cycle {n} I was {layers} deep.",
                "Cycle {n} left me with {layers}.",
            ],
            **f,
        )
    )
    stage = [
        "During cycle {n} I was in my {stage} stage.",
        "Cycle {n} belonged to my {stage} stage.",
    ]
    if c.stage_start:
        stage = ["Cycle {n} began my {stage} stage.", "My {stage} stage began in cycle {n}."]
    out.append(w.say(stage, **f))
    if c.judged:
        f.update(kept=c.kept, judged=c.judged)
        out.append(
            w.say(
                [
                    "In cycle {n} my curators kept {kept} of {judged} candidates.",
                    "My curators kept {kept} of the {judged} candidates I wrote in cycle {n}.",
                    "Of {judged} candidates in cycle {n}, my curators kept {kept}.",
                ],
                **f,
            )
        )
        for t in c.curators:
            if not t.rejected:
                continue
            g = {"who": _curator(t.curator), "r": t.rejected, "why": t.top_reason}
            if t.top_reason:
                variants = [
                    '{who} rejected {r}; the commonest reason was "{why}".',
                    '{who} turned down {r}, most often as "{why}".',
                ]
            else:
                variants = ["{who} rejected {r}."]
            sentence = w.say(variants, **g)
            out.append(sentence[0].upper() + sentence[1:])
    else:
        out.append(w.say(["No new candidates were judged in cycle {n}."], **f))
    return " ".join(out)


def _outcome_text(c: CycleFacts, prev: CycleFacts | None, seed: int) -> str | None:
    """How a committed cycle's training came out, against the cycle before."""
    if not c.metrics:
        return None
    w = _Writer(seed, f"outcome:{c.n}")
    out = []
    for name, value in c.metrics.items():
        label = TRACKED[name][0]
        f = {"n": c.n, "label": label, "v": _value(name, value)}
        before = prev.metrics.get(name) if prev else None
        if before is None:
            first = [
                "At the end of cycle {n} my {label} was {v}.",
                "After cycle {n} my {label} was {v}.",
            ]
            out.append(w.say(first, **f))
            continue
        f.update(m=prev.n if prev else 0, b=_value(name, before))
        if f["b"] == f["v"]:
            out.append(w.say(["After cycle {n} my {label} held at {v}, as in cycle {m}."], **f))
        elif value < before:
            out.append(
                w.say(
                    [
                        "In cycle {n} my {label} fell from {b} to {v}.",
                        "After cycle {n} my {label} was {v}, down from {b} in cycle {m}.",
                    ],
                    **f,
                )
            )
        else:
            out.append(
                w.say(
                    [
                        "In cycle {n} my {label} rose from {b} to {v}.",
                        "After cycle {n} my {label} was {v}, up from {b} in cycle {m}.",
                    ],
                    **f,
                )
            )
    return " ".join(out)


def _summary_text(record: Record, identity_name: str, seed: int) -> str:
    """Where the agent stands as of the record's last cycle, with its history in brief."""
    last = record.cycles[-1]
    w = _Writer(seed, f"summary:{record.upto_cycle}")
    layers = count(record.layers, "layer")
    f = {"name": identity_name, "n": last.n, "layers": layers, "stage": last.stage_name}
    out = [
        w.say(
            [
                "I am {name}.",
                "My name is {name}.",
                "I am {name}, and this is my own training record.",
            ],
            **f,
        ),
        "After cycle {n} I had {layers}.".format(**f),
    ]
    if record.layers and record.layers in record.layer_added:
        f.update(ord=ordinal(record.layers), added=record.layer_added[record.layers])
        out.append("My {ord} layer was added in cycle {added}.".format(**f))
    spans: list[tuple[str, list[CycleFacts]]] = []
    for c in record.cycles:
        if c.stage_start or not spans:
            spans.append((c.stage_name, []))
        spans[-1][1].append(c)
    for name, cs in spans:
        grown = [k for c in cs for k in c.grew]
        when = f"cycle {cs[0].n}" if len(cs) == 1 else f"cycles {cs[0].n} to {cs[-1].n}"
        if not grown:
            what = "I grew no layer"
        elif len(grown) <= 2:
            what = f"I grew my {_and([ordinal(k) for k in grown])} " + (
                "layers" if grown[1:] else "layer"
            )
        else:
            what = f"I grew layers {grown[0]} to {grown[-1]}"
        out.append(f"In my {name} stage, in {when}, {what}.")
    for t in record.trends.values():
        h = {
            "label": TRACKED[t.name][0],
            "a": t.first_cycle,
            "b": t.last_cycle,
            "dir": DIRECTIONS[t.direction],
            "v0": _value(t.name, t.first),
            "v1": _value(t.name, t.last),
        }
        out.append(
            w.say(
                [
                    "Between cycle {a} and cycle {b} my {label} {dir}, from {v0} to {v1}.",
                    "From cycle {a} to cycle {b} my {label} {dir}: {v0}, then {v1}.",
                ],
                **h,
            )
        )
    return " ".join(out)


def _entries(record: Record, identity_name: str, seed: int) -> list[tuple[str, str]]:
    """(origin, text) pairs: a summary of the record's last cycle, then one text per cycle
    and one per committed cycle's outcome."""
    if not record.cycles:
        return []
    out = [
        (f"{ORIGIN}/summary/{record.upto_cycle:04d}", _summary_text(record, identity_name, seed))
    ]
    prev: CycleFacts | None = None
    prev_done: CycleFacts | None = None
    for c in record.cycles:
        out.append((f"{ORIGIN}/cycle/{c.n:04d}", _cycle_text(c, prev, seed)))
        if (text := _outcome_text(c, prev_done, seed)) is not None:
            out.append((f"{ORIGIN}/outcome/{c.n:04d}", text))
            prev_done = c
        prev = c
    return out


def record_texts(record: Record, identity_name: str, seed: int) -> list[str]:
    """First-person texts of the record; the same record and seed give the same texts."""
    return [text for _, text in _entries(record, identity_name, seed)]


def record_samples(record: Record, identity_name: str, seed: int) -> list[dict[str, Any]]:
    """The texts as corpus rows for :meth:`Store.add_samples`. The ``origin`` keys make a
    second call (a resumed cycle, the next cycle re-telling old ones) add only what is new."""
    return [
        {
            "cycle": record.upto_cycle,
            "source": SOURCE,
            "origin": origin,
            "text": text,
            "split": "train",
            "status": "accepted",
        }
        for origin, text in _entries(record, identity_name, seed)
    ]


# --------------------------------------------------------------------------- questions
class Question(BaseModel):
    """A multiple-choice question about the agent. ``reply`` is the first-person answer with
    ``{answer}`` where the answer goes; the evaluator ranks the filled-in replies."""

    kind: Literal["layers", "layer_added", "stage", "kept", "trend"]
    prompt: str
    reply: str
    answer: str
    distractors: list[str]

    def options(self) -> list[str]:
        return [self.answer, *self.distractors]

    def replies(self) -> list[str]:
        return [self.reply.replace("{answer}", option) for option in self.options()]


def spread(items: Sequence[Any], k: int) -> list[Any]:
    """At most ``k`` items evenly spaced over ``items``, the first and last included."""
    if len(items) <= k:
        return list(items)
    if k == 1:
        return [items[-1]]
    picks = sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)})
    return [items[i] for i in picks]


def nearby(value: int, lo: int, hi: int, k: int, rng: random.Random) -> list[int]:
    """Up to ``k`` other integers in [lo, hi], drawn from the 2k nearest to ``value``, so the
    true value is not always the middle one."""
    pool = sorted((v for v in range(lo, hi + 1) if v != value), key=lambda v: (abs(v - value), v))
    pool = pool[: 2 * k]
    return sorted(rng.sample(pool, min(k, len(pool))))


def self_questions(record: Record, choices: int = 4, per_kind: int = 6) -> list[Question]:
    """Questions whose answers the record holds, each with up to ``choices - 1`` distractors
    of the same type; a question with no plausible distractor is left out."""
    k = choices - 1
    out: list[Question] = []

    def add(kind: Any, prompt: str, reply: str, answer: Any, distractors: Iterable[Any]) -> None:
        wrong = [str(d) for d in distractors if str(d) != str(answer)]
        if wrong:
            out.append(
                Question(
                    kind=kind, prompt=prompt, reply=reply, answer=str(answer), distractors=wrong
                )
            )

    def rng(prompt: str) -> random.Random:
        return random.Random(prompt)

    upto = record.upto_cycle
    for c in spread(record.cycles, per_kind):
        p = f"How many layers did you have after cycle {c.n}?"
        top = max(c.layers + choices, record.layers)
        wrong = [count(n, "layer") for n in nearby(c.layers, 1, top, k, rng(p))]
        add("layers", p, f"After cycle {c.n} I had {{answer}}.", count(c.layers, "layer"), wrong)
    for layer in spread(sorted(record.layer_added), per_kind):
        n, o = record.layer_added[layer], ordinal(layer)
        p = f"In which cycle was your {o} layer added?"
        wrong = nearby(n, 0, upto, k, rng(p))
        add("layer_added", p, f"My {o} layer was added in cycle {{answer}}.", n, wrong)
    if len(record.stage_names) > 1:
        for c in spread(record.cycles, per_kind):
            p = f"Which stage were you in during cycle {c.n}?"
            others = [s for s in record.stage_names if s != c.stage_name]
            wrong = sorted(rng(p).sample(others, min(k, len(others))))
            add(
                "stage", p, f"During cycle {c.n} I was in my {{answer}} stage.", c.stage_name, wrong
            )
    for c in spread([c for c in record.cycles if c.judged], per_kind):
        p = f"How many candidates did your curators keep in cycle {c.n}?"
        reply = f"In cycle {c.n} my curators kept {{answer}} of {c.judged} candidates."
        add("kept", p, reply, c.kept, nearby(c.kept, 0, c.judged, k, rng(p)))
    for t in record.trends.values():
        label, a, b = TRACKED[t.name][0], t.first_cycle, t.last_cycle
        p = f"Did your {label} go up or down between cycle {a} and cycle {b}?"
        reply = f"Between cycle {a} and cycle {b} my {label} {{answer}}."
        others = [d for d in DIRECTIONS.values() if d != DIRECTIONS[t.direction]]
        add("trend", p, reply, DIRECTIONS[t.direction], rng(p).sample(others, min(k, 2)))
    return out
