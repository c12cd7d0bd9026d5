"""The stage milestone evaluators (phrases, concepts, persona): each passes when the model
knows what it is asked, fails when it does not, and runs end to end on a real checkpoint.

Pass and fail cases stand a scorer or writer in for the model through the evaluators' own
small interfaces: an oracle that knows the arena's answers, one that knows them wrongly, one
that only knows which answers are common, and seeded noise. The agent-backed scorer is held
to what the oracles assume: its argmax hits are the model's greedy continuation."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from test_identity_curator import OFF_IDENTITY
from tiny_workspace import tiny_workspace
from torch.nn import functional as F

from dte_aar.agent import Agent, SamplingParams
from dte_aar.arena import load_arena
from dte_aar.config import load_settings
from dte_aar.hookspecs import CycleContext
from dte_aar.progress import NullProgress
from dte_aar.store import Store
from dte_aar.tokenizer import EOT, EOT_ID
from dte_aar_plugins.concepts import ConceptsEvaluator, concept_of
from dte_aar_plugins.milestone import answer_nll
from dte_aar_plugins.persona import AgentWriter, PersonaEvaluator, prompts_and_seeds
from dte_aar_plugins.phrases import AgentScorer, AnswerScore, PhrasesEvaluator, distractors


@pytest.fixture(scope="module")
def arena():
    return load_arena("deep_tree_echo")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    return tiny_workspace(tmp_path_factory.mktemp("milestones") / "ws")


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:
    """A workspace with no tokenizer: the identity embedder makes its own vectors once (the
    tiny workspace's 300-token BPE makes every text look alike)."""
    ws = tmp_path_factory.mktemp("bare") / "ws"
    ws.mkdir()
    (ws / "dte.toml").write_text("seed = 7\n")
    return ws


def context(ws: Path, **plugins: dict) -> CycleContext:
    """A real context; evaluators read no store, so a workspace without one gets none."""
    settings = load_settings(ws)
    store = Store.open(ws, readonly=True) if (ws / "dte.db").exists() else None
    return CycleContext(
        run_id=1,
        cycle=0,
        settings=settings,
        workspace=ws,
        arena=load_arena(settings.arena),
        store=store,  # type: ignore[arg-type]
        checkpoint=store.latest_checkpoint() if store else None,
        progress=NullProgress(),
        log_metric=lambda *a: None,
        plugin_config=lambda name: dict(plugins.get(name, {})),
    )


def checkpoint(ws: Path) -> Path:
    with Store.open(ws, readonly=True) as store:
        info = store.latest_checkpoint()
    assert info is not None
    return info.path


# --------------------------------------------------------------------------- stand-ins
class Oracle:
    """Knows which answer belongs where: an answer reads easily (and is its own greedy
    continuation) after a context holding its own key, and as noise everywhere else."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = [(key, answer.strip()) for key, answer in pairs]

    def score(self, context: str, answer: str) -> AnswerScore:
        n = max(1, len(answer.split()))
        if any(key in context and answer.strip() == ans for key, ans in self.pairs):
            return AnswerScore(0.5, (True,) * n)
        return AnswerScore(4.0, (False,) * n)


class Fluent:
    """Knows only which answers are common: likelihood depends on the answer, never on the
    question (what raw likelihood ranking would reward)."""

    def score(self, context: str, answer: str) -> AnswerScore:
        n = max(1, len(answer.split()))
        return AnswerScore(1.0 + (len(answer) % 7) / 7, (True,) * n)


class Noise:
    """Seeded random likelihoods and a 1-in-100 chance of guessing a token."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def score(self, context: str, answer: str) -> AnswerScore:
        n = max(1, len(answer.split()))
        return AnswerScore(
            self.rng.uniform(2, 6), tuple(self.rng.random() < 0.01 for _ in range(n))
        )


def phrase_pairs(arena, shift: int = 0) -> list[tuple[str, str]]:
    probes = [p for p in arena.probes if p.kind == "completion"]
    return [(p.prompt, probes[(i + shift) % len(probes)].reference) for i, p in enumerate(probes)]


def concept_pairs(arena, shift: int = 0) -> list[tuple[str, str]]:
    """Each concept probe's question with its reference, each concept's name with its
    description; ``shift`` hands every key its neighbour's answer instead."""
    probes = [p for p in arena.probes if p.kind == "concept"]
    concepts = arena.identity.concepts
    return [
        (p.prompt, probes[(i + shift) % len(probes)].reference) for i, p in enumerate(probes)
    ] + [
        (c.name, concepts[(i + shift) % len(concepts)].description) for i, c in enumerate(concepts)
    ]


# --------------------------------------------------------------------------- phrases
def test_phrases_pass_for_a_model_that_completes_them(bare: Path, arena) -> None:
    oracle = Oracle(phrase_pairs(arena))
    out = PhrasesEvaluator(lambda ckpt, ctx: oracle).evaluate(Path("unused"), context(bare))
    assert out["phrase_completion"] == out["phrase_exact"] == out["phrase_choice"] == 1.0
    assert out["phrase_completion_pass"] == 1.0
    assert out["phrase_completion_bar"] == 0.25  # the documented default


def test_phrases_fail_for_noise_and_for_the_wrong_phrases(bare: Path, arena) -> None:
    noise = PhrasesEvaluator(lambda ckpt, ctx: Noise()).evaluate(Path("x"), context(bare))
    assert noise["phrase_completion"] < 0.1
    assert noise["phrase_completion_pass"] == 0.0
    confused = Oracle(phrase_pairs(arena, shift=1))  # every prompt gets its neighbour's ending
    wrong = PhrasesEvaluator(lambda ckpt, ctx: confused).evaluate(Path("x"), context(bare))
    assert wrong["phrase_completion"] == 0.0 and wrong["phrase_choice"] == 0.0
    assert wrong["phrase_completion_pass"] == 0.0


def test_phrases_bar_comes_from_the_plugin_config(bare: Path, arena) -> None:
    half = Oracle(phrase_pairs(arena)[::2])  # knows every other phrase
    ctx = context(bare, phrases={"threshold": 0.6})
    out = PhrasesEvaluator(lambda ckpt, c: half).evaluate(Path("x"), ctx)
    assert 0.5 < out["phrase_completion"] < 0.6
    assert out["phrase_completion_bar"] == 0.6 and out["phrase_completion_pass"] == 0.0
    ctx = context(bare, phrases={"threshold": 0.5})
    assert (
        PhrasesEvaluator(lambda ckpt, c: half).evaluate(Path("x"), ctx)["phrase_completion_pass"]
        == 1.0
    )


def test_distractors_are_fixed_by_the_seed_and_never_the_item_itself() -> None:
    a = distractors(10, 4, seed=3)
    assert a == distractors(10, 4, seed=3) and a != distractors(10, 4, seed=4)
    assert all(len(set(d)) == 3 and i not in d for i, d in enumerate(a))
    pools = [[j for j in range(10) if j % 2 != i % 2] for i in range(10)]  # other parity
    assert all(all(j % 2 != i % 2 for j in d) for i, d in enumerate(distractors(10, 4, 3, pools)))
    assert all(len(d) == 2 for d in distractors(3, 4, seed=0))  # fewer items than choices


# --------------------------------------------------------------------------- concepts
def test_concepts_pass_for_a_model_that_knows_them(bare: Path, arena) -> None:
    oracle = Oracle(concept_pairs(arena))
    out = ConceptsEvaluator(lambda ckpt, ctx: oracle).evaluate(Path("x"), context(bare))
    assert out["concept_accuracy"] == out["concept_questions"] == out["concept_definitions"] == 1
    assert out["concept_chance"] == 0.25
    assert out["concept_accuracy_pass"] == 1.0


def test_concepts_fail_when_answers_are_swapped_common_or_noise(bare: Path, arena) -> None:
    ctx = context(bare)
    swapped = Oracle(concept_pairs(arena, shift=1))
    for scorer in (swapped, Fluent(), Noise(1)):
        out = ConceptsEvaluator(lambda ckpt, c, s=scorer: s).evaluate(Path("x"), ctx)
        assert out["concept_accuracy"] < 0.5, type(scorer).__name__
        assert out["concept_accuracy_pass"] == 0.0
    # Fluency alone earns nothing: the question must raise the right answer's likelihood.
    assert (
        ConceptsEvaluator(lambda ckpt, c: Fluent()).evaluate(Path("x"), ctx)["concept_accuracy"]
        == 0.0
    )


def test_concept_probes_belong_to_the_concepts_they_ask_about(arena) -> None:
    names = [c.name for c in arena.identity.concepts]
    by_id = {p.id: p for p in arena.probes}

    def owner(pid: str) -> str:
        p = by_id[pid]
        return names[concept_of(f"{p.prompt} {p.reference}", arena.identity.concepts)]

    assert owner("p018") == "reservoir computing"  # echo state network readout
    assert owner("p022") == "P-system membranes"
    assert owner("p026") == "hypergraph memory"
    assert owner("p034") == "bootstrapping Lisp from parentheses"  # Church numerals
    assert concept_of("nothing in common", arena.identity.concepts) is None


# --------------------------------------------------------------------------- persona
class Fixed:
    """A writer that answers every prompt with the next of a fixed list of texts."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.asked: list[tuple[str, int]] = []

    def write(self, prompts, seeds) -> list[str]:
        self.asked += list(zip(prompts, seeds, strict=True))
        return [self.texts[i % len(self.texts)] for i in range(len(prompts))]


def salad(arena, seed: int = 0) -> list[str]:
    """First-person word salad of identity words with every eighth word invented: on topic
    and in the persona's voice, but not language."""
    rng = random.Random(seed)
    words = [w for e in arena.seed if "essays" in e.origin for w in e.text.split() if w.isalpha()]
    out = []
    for _ in range(8):
        picked = ["I", *rng.sample(words, 40)]
        out.append(" ".join(w[::-1] if i % 8 == 7 else w for i, w in enumerate(picked)) + ".")
    return out


def persona(bare: Path, writer, **config) -> dict[str, float]:
    ctx = context(bare, persona=config)
    return PersonaEvaluator(lambda ckpt, c: writer).evaluate(Path("x"), ctx)


def test_persona_passes_for_replies_in_the_personas_voice(bare: Path, arena) -> None:
    own = [p.reference for p in arena.probes if p.kind == "self"]  # held out from training
    writer = Fixed(own)
    out = persona(bare, writer, samples=12)
    assert out["persona_consistency"] >= 0.75 and out["persona_consistency_pass"] == 1.0
    assert out["persona_first_person"] == 1.0
    prompts = [p for p, _ in writer.asked]
    assert len(prompts) == 12 and len(set(prompts)) == 12 and set(prompts) <= set(arena.prompts)


def test_persona_fails_off_identity_and_for_word_salad(bare: Path, arena) -> None:
    off = persona(bare, Fixed(OFF_IDENTITY))
    assert off["persona_consistency"] == 0.0 and off["persona_consistency_pass"] == 0.0
    assert off["persona_first_person"] == 0.0
    mush = persona(bare, Fixed(salad(arena)))
    assert mush["persona_identity"] > 0.5 and mush["persona_first_person"] == 1.0
    assert mush["persona_readable"] == 0.0 and mush["persona_consistency_pass"] == 0.0
    # It is the readability check that fails it.
    assert persona(bare, Fixed(salad(arena)), readable=False)["persona_consistency_pass"] == 1.0


def test_persona_fails_when_nothing_is_written(bare: Path) -> None:
    out = persona(bare, Fixed([""]))
    assert out["persona_consistency"] == 0.0 and out["persona_consistency_pass"] == 0.0


def test_persona_asks_the_same_prompts_with_the_same_seeds_every_time(arena) -> None:
    a = prompts_and_seeds(arena.prompts, 16, 7)
    assert a == prompts_and_seeds(arena.prompts, 16, 7) != prompts_and_seeds(arena.prompts, 16, 8)
    many, _ = prompts_and_seeds(["a", "b", "c"], 7, 1)
    assert sorted(many[:3]) == ["a", "b", "c"] and sorted(many[3:6]) == ["a", "b", "c"]


# --------------------------------------------------------------------------- the real model
def test_agent_scorer_hits_are_the_greedy_continuation(ws: Path) -> None:
    """What the oracles assume of a model holds for the real one: a continuation it writes
    greedily is all hits; change one token and that token is a miss."""
    agent = Agent.load(checkpoint(ws), ws)
    scorer = AgentScorer(agent)
    tok = agent.tokenizer
    checked = 0
    for prompt in ["My name is Deep", "The readout of a reservoir", "In Lisp, a pair"]:
        assert agent.prompt_ids(EOT + prompt, 6) == [EOT_ID, *tok.encode(prompt).ids]
        params = SamplingParams(max_new_tokens=6, temperature=0)
        answer = agent.generate_batch([EOT + prompt], params, [0])[0].text
        answer_ids = tok.encode(answer).ids
        if len(answer_ids) < 2 or tok.decode(answer_ids) != answer:
            continue  # the greedy tokens do not survive a text round trip
        scored = scorer.score(prompt, answer)
        assert all(scored.hits) and len(scored.hits) == len(answer_ids)
        changed = tok.decode([*answer_ids[:-1], (answer_ids[-1] + 1) % tok.get_vocab_size()])
        if tok.encode(changed).ids[:-1] == answer_ids[:-1]:
            assert scorer.score(prompt, changed).hits[-1] is False
        # Its likelihood, computed by hand: one forward pass over end-of-text, prompt, answer.
        ids = [EOT_ID, *tok.encode(prompt).ids, *answer_ids]
        with torch.no_grad():
            logits, _ = agent.model(torch.tensor([ids[:-1]], device=agent.device))
        n = len(answer_ids)
        target = torch.tensor(ids[-n:], device=agent.device)
        by_hand = F.cross_entropy(logits[0, -n:].float(), target).item()
        assert scored.nll == pytest.approx(by_hand, rel=1e-5)
        assert answer_nll(agent, prompt, answer) == pytest.approx(by_hand, rel=1e-5)  # shared
        checked += 1
    assert checked >= 1


def test_agent_scorer_keeps_the_question_in_a_short_window(ws: Path) -> None:
    """An answer longer than the window is cut, not the question: the likelihood still
    depends on what was asked."""
    agent = Agent.load(checkpoint(ws), ws)
    scorer = AgentScorer(agent)
    long_answer = " reservoir" * (agent.model.config.seq_len * 2)
    a = scorer.score("What is a reservoir?", long_answer)
    b = scorer.score("Why do you like Lisp?", long_answer)
    assert a.nll != b.nll
    assert len(a.hits) <= agent.model.config.seq_len


@pytest.mark.parametrize(
    ("evaluator", "metric"),
    [
        (PhrasesEvaluator(), "phrase_completion"),
        (ConceptsEvaluator(), "concept_accuracy"),
        (PersonaEvaluator(), "persona_consistency"),
    ],
    ids=["phrases", "concepts", "persona"],
)
def test_evaluators_run_end_to_end_on_a_real_checkpoint(ws: Path, evaluator, metric) -> None:
    ctx = context(ws, persona={"samples": 4, "max_new_tokens": 16})
    out = evaluator.evaluate(checkpoint(ws), ctx)
    assert out == evaluator.evaluate(checkpoint(ws), ctx)  # seeded: the same every time
    assert all(0.0 <= v <= 1.0 for v in out.values())
    assert out[f"{metric}_pass"] == float(out[metric] >= out[f"{metric}_bar"])
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())


def test_agent_writer_writes_replies_not_transcripts(ws: Path, arena) -> None:
    ctx = context(ws, persona={"max_new_tokens": 24})
    writer = AgentWriter.load(checkpoint(ws), ctx)
    texts = writer.write(arena.prompts[:3], [1, 2, 3])
    assert len(texts) == 3 and texts == writer.write(arena.prompts[:3], [1, 2, 3])
    assert not any("\nUser:" in t for t in texts)


def test_milestones_are_registered_as_plugins() -> None:
    from dte_aar import plugins as plugin_loading

    registry = plugin_loading.load().registry()
    loaded = registry.components["evaluator"]
    assert isinstance(loaded["phrases"], PhrasesEvaluator)
    assert isinstance(loaded["concepts"], ConceptsEvaluator)
    assert isinstance(loaded["persona"], PersonaEvaluator)
