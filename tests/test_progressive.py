"""The built-in trainer, evaluator and generator over two real (tiny) cycles: the model grows
by one block, greedy freezing leaves the lower block alone, perplexity is finite, sampling is
seeded, and the plugins register through pluggy as any third-party plugin would."""

from __future__ import annotations

import math
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pluggy
import pytest
import torch

from dte_aar import hookspecs
from dte_aar.agent import Agent, checkpoint_file, tokenizer_file, tokens_file
from dte_aar.arena import Example
from dte_aar.checkpoint import CheckpointError, load_checkpoint, sha256_file
from dte_aar.config import Settings
from dte_aar.hookspecs import CheckpointInfo, CycleContext, GenerationRequest
from dte_aar.progress import NullProgress
from dte_aar.tokenizer import load_tokenizer, save_tokenizer, tokenizer_hash, train_tokenizer
from dte_aar.tokens import PackedTokens, split_documents
from dte_aar_plugins import checkpoint as checkpoint_plugin
from dte_aar_plugins import heldout as heldout_plugin
from dte_aar_plugins import progressive
from dte_aar_plugins.checkpoint import CheckpointGenerator, format_prompt, reply_only
from dte_aar_plugins.heldout import HeldoutEvaluator
from dte_aar_plugins.progressive import ProgressiveTrainer, trainable_top_blocks

TOPICS = ["roots", "branches", "echoes", "memory", "light", "rain", "the forest", "silence"]
TEXTS = [
    f"User: tell me about {TOPICS[i % 8]} number {i}.\nDeep Tree Echo: I hold {TOPICS[i % 8]} "
    f"the way a tree holds rings; each echo {i % 5} returns as a branch of me."
    for i in range(50)
]


class FakeStore:
    """The one store API the trainer uses: accepted samples of a split, ordered by id.

    Like SQLite's cursors, it refuses to be read from another thread than its own.
    """

    def __init__(self) -> None:
        self.rows: dict[str, dict[int, str]] = {"train": {}, "heldout": {}}
        self.thread = threading.get_ident()

    def add(self, sample_id: int, text: str) -> None:
        self.rows["heldout" if sample_id % 10 == 0 else "train"][sample_id] = text

    def corpus(self, split: str):
        for row in sorted(self.rows[split].items()):
            assert threading.get_ident() == self.thread, "store read from another thread"
            yield row

    def clear_metrics(self, cycle: int, phase: str, from_step: int | None = 0, summary=True):
        """The trainer clears the per-step rows of the steps it is about to run."""
        self.cleared = (cycle, phase, from_step, summary)


PHRASES = ["I", "me", "my", "Deep Tree Echo", "echo"]
ARENA = SimpleNamespace(
    identity=SimpleNamespace(name="Deep Tree Echo", self_reference=PHRASES),
    seed=[Example(text, f"seed.jsonl#{i}", "chat") for i, text in enumerate(TEXTS[:20])],
)


class Recorder:
    def __init__(self) -> None:
        self.metrics: list[tuple[int, str, float, int | None]] = []

    def for_cycle(self, cycle: int):
        def log(name: str, value: float, step: int | None = None) -> None:
            self.metrics.append((cycle, name, value, step))

        return log


def make_settings(**train: Any) -> Settings:
    return Settings(
        seed=11,
        train={
            "steps_per_cycle": 20,
            "batch_size": 8,
            "seq_len": 32,
            "vocab_size": 300,
            "warmup_steps": 2,
            "lr": 1e-2,
            "device": "cpu",
            **train,
        },
        generate={"max_new_tokens": 12, "temperature": 0.9, "top_k": 20},
        plugins={"progressive": {"d_model": 32, "n_heads": 2, "d_ff": 64, "target_layers": 4}},
    )


def context(
    ws: Path, store: FakeStore, settings: Settings, cycle: int, ckpt: CheckpointInfo | None, rec
) -> CycleContext:
    return CycleContext(
        run_id=1,
        cycle=cycle,
        settings=settings,
        workspace=ws,
        arena=ARENA,  # type: ignore[arg-type]
        store=store,  # type: ignore[arg-type]
        checkpoint=ckpt,
        progress=NullProgress(),
        log_metric=rec.for_cycle(cycle),
        plugin_config=lambda name: dict(settings.plugins.get(name, {})),
    )


def register(result_path: Path, layers: int, cycle: int) -> CheckpointInfo:
    """What the cycle does after training: checksum the file and call it good."""
    return CheckpointInfo(result_path, sha256_file(result_path), layers, cycle)


@pytest.fixture(scope="module")
def two_cycles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ws = tmp_path_factory.mktemp("ws")
    store = FakeStore()
    for i, text in enumerate(TEXTS[:40], start=1):
        store.add(i, text)
    settings = make_settings()
    rec = Recorder()
    trainer = ProgressiveTrainer()
    first = trainer.train(context(ws, store, settings, 1, None, rec))
    info1 = register(first.path, first.layers, 1)
    tok_hash = tokenizer_hash(load_tokenizer(tokenizer_file(ws)))
    train_len_1 = len(PackedTokens(tokens_file(ws, "train")))
    for i, text in enumerate(TEXTS[40:], start=41):  # the corpus grows between cycles
        store.add(i, text)
    second = trainer.train(context(ws, store, settings, 2, info1, rec))
    info2 = register(second.path, second.layers, 2)
    return {
        "ws": ws,
        "store": store,
        "settings": settings,
        "rec": rec,
        "first": first,
        "second": second,
        "info1": info1,
        "info2": info2,
        "tok_hash": tok_hash,
        "train_len_1": train_len_1,
    }


def test_first_cycle_builds_a_one_block_model_trained_end_to_end(two_cycles) -> None:
    first = two_cycles["first"]
    assert first.path == checkpoint_file(two_cycles["ws"], 1) and first.path.exists()
    assert first.layers == 1
    model, meta = load_checkpoint(first.path, two_cycles["info1"].sha256)
    assert (model.config.d_model, model.config.seq_len, model.config.n_layers) == (32, 32, 1)
    tok = load_tokenizer(tokenizer_file(two_cycles["ws"]))
    assert model.config.vocab_size == tok.get_vocab_size() <= 300
    assert meta["frozen"] == [False] and meta["n_trainable"] is None
    assert meta["cycle"] == 1 and meta["step"] == 20
    assert meta["tokenizer_hash"] == two_cycles["tok_hash"]
    assert first.params == model.num_params()
    assert math.isfinite(first.metrics["train_loss"])
    assert first.metrics["train_loss"] < math.log(model.config.vocab_size)


def test_second_cycle_grows_a_layer_and_greedy_freezing_keeps_the_lower_block(two_cycles):
    second = two_cycles["second"]
    assert second.layers == 2
    m1, _ = load_checkpoint(two_cycles["first"].path)
    m2, meta = load_checkpoint(second.path, two_cycles["info2"].sha256)
    assert meta["frozen"] == [True, False] and meta["n_trainable"] == 1
    assert meta["step"] == 40 and meta["growth"] == "identity"
    s1, s2 = m1.state_dict(), m2.state_dict()
    for name in s1:
        if name.startswith(("blocks.0.", "tok_emb.", "pos_emb.", "cooc_", "key_bias_init")):
            assert torch.equal(s1[name], s2[name]), name  # frozen or fixed: bit for bit
        else:
            assert not torch.equal(s1[name], s2[name]), name  # head and final norm train
    # The new block left its identity init: its output projections learned.
    assert m2.blocks[1].attn.proj.weight.abs().sum() > 0
    assert second.metrics["optimizer_state_restored"] == 3  # ln_f weight, bias; head
    assert second.metrics["trainable_params"] < second.params


def test_tokenizer_is_trained_once_and_packed_files_grow(two_cycles) -> None:
    ws = two_cycles["ws"]
    assert tokenizer_hash(load_tokenizer(tokenizer_file(ws))) == two_cycles["tok_hash"]
    train_bin = PackedTokens(tokens_file(ws, "train"))
    heldout = PackedTokens(tokens_file(ws, "heldout"))
    store = two_cycles["store"]
    assert train_bin.sample_ids == sorted(store.rows["train"])
    assert heldout.sample_ids == sorted(store.rows["heldout"]) == [10, 20, 30, 40, 50]
    assert len(train_bin) > two_cycles["train_len_1"]
    assert two_cycles["second"].metrics["train_tokens_total"] == len(train_bin)


def test_metrics_are_logged_per_step(two_cycles) -> None:
    metrics = two_cycles["rec"].metrics
    steps = [s for c, n, _, s in metrics if c == 2 and n == "train_loss"]
    assert steps == list(range(20))


def test_heldout_perplexity_is_finite_and_matches_the_agent(two_cycles) -> None:
    ws, settings, rec = two_cycles["ws"], two_cycles["settings"], Recorder()
    ctx = context(ws, two_cycles["store"], settings, 2, two_cycles["info1"], rec)
    scores = HeldoutEvaluator().evaluate(two_cycles["second"].path, ctx)
    assert set(scores) == {"heldout_ppl", "heldout_loss"}
    assert math.isfinite(scores["heldout_ppl"]) and scores["heldout_ppl"] > 1
    assert scores["heldout_ppl"] == pytest.approx(math.exp(scores["heldout_loss"]))
    agent = Agent.load(two_cycles["second"].path, ws)
    heldout = PackedTokens(tokens_file(ws, "heldout"))
    # A model trained on this persona beats the uniform guess on text it never saw.
    assert scores["heldout_ppl"] < agent.model.config.vocab_size
    assert agent.perplexity(heldout) == pytest.approx(scores["heldout_ppl"])


def test_mean_loss_matches_a_direct_computation(two_cycles) -> None:
    agent = Agent.load(two_cycles["second"].path, two_cycles["ws"])
    data = PackedTokens(tokens_file(two_cycles["ws"], "heldout")).memmap()[:75]
    T = agent.model.config.seq_len
    total = 0.0
    for s in range(0, 74, T):
        n = min(T, 74 - s)
        x = torch.tensor(data[s : s + n].astype("int64"))[None]
        y = torch.tensor(data[s + 1 : s + 1 + n].astype("int64"))[None]
        with torch.no_grad():
            total += agent.model(x, y)[1].item() * n
    assert agent.mean_loss(data) == pytest.approx(total / 74, rel=1e-5)
    assert agent.mean_loss(data, batch_size=1) == pytest.approx(total / 74, rel=1e-5)


def test_checkpoint_generator_is_seeded_and_yields_replies(two_cycles) -> None:
    ws, settings = two_cycles["ws"], two_cycles["settings"]
    ctx = context(ws, two_cycles["store"], settings, 3, two_cycles["info2"], Recorder())
    requests = [
        GenerationRequest(slot=0, prompt="tell me about roots", style_example=None, seed=1),
        GenerationRequest(slot=1, prompt="tell me about rain", style_example=TEXTS[0], seed=2),
        GenerationRequest(slot=2, prompt="tell me about roots", style_example=None, seed=3),
    ]
    gen = CheckpointGenerator()
    first = list(gen.generate(requests, ctx))
    again = list(gen.generate(requests, ctx))
    assert first == again
    assert [c.slot for c in first] == [0, 1, 2]
    assert [c.prompt for c in first] == [r.prompt for r in requests]
    assert {c.model for c in first} == {"checkpoint:cycle-2"}
    assert all(0 < c.tokens <= 12 for c in first)
    assert all(isinstance(c.text, str) and "\nUser:" not in c.text for c in first)
    assert first[0].text != first[2].text  # other seed, other sample


def test_checkpoint_generator_needs_a_checkpoint(two_cycles) -> None:
    ws, settings = two_cycles["ws"], two_cycles["settings"]
    ctx = context(ws, two_cycles["store"], settings, 1, None, Recorder())
    req = [GenerationRequest(slot=0, prompt="hi", style_example=None, seed=1)]
    assert list(CheckpointGenerator().generate(req, ctx)) == []
    bad = CheckpointInfo(two_cycles["info2"].path, "f" * 64, 2, 2)
    ctx = context(ws, two_cycles["store"], settings, 3, bad, Recorder())
    with pytest.raises(CheckpointError, match="registered"):
        list(CheckpointGenerator().generate(req, ctx))


def test_agent_refuses_another_tokenizer(two_cycles, tmp_path: Path) -> None:
    save_tokenizer(
        train_tokenizer(["something else entirely"] * 3, 300), tmp_path / "tokenizer.json"
    )
    with pytest.raises(CheckpointError, match="tokenizer"):
        Agent.load(two_cycles["second"].path, tmp_path)


def test_complete_crops_long_prompts(two_cycles) -> None:
    agent = Agent.load(two_cycles["second"].path, two_cycles["ws"])
    long_prompt = " ".join(TEXTS[:5])  # far more tokens than seq_len
    a = agent.complete(long_prompt, max_new_tokens=10, temperature=0.9, top_k=10, seed=4)
    b = agent.complete(long_prompt, max_new_tokens=10, temperature=0.9, top_k=10, seed=4)
    assert a == b and isinstance(a, str)


def test_none_freezing_trains_everything(tmp_path: Path, two_cycles) -> None:
    """freeze = "none" and copy growth, from cycle 1's checkpoint in a copy of the workspace."""
    ws = tmp_path / "ws"
    shutil.copytree(two_cycles["ws"], ws)
    settings = make_settings(freeze="none", growth="copy", steps_per_cycle=3)
    info = CheckpointInfo(checkpoint_file(ws, 1), two_cycles["info1"].sha256, 1, 1)
    result = ProgressiveTrainer().train(
        context(ws, two_cycles["store"], settings, 2, info, Recorder())
    )
    m1, _ = load_checkpoint(info.path)
    m2, meta = load_checkpoint(result.path)
    assert meta["frozen"] == [False, False] and meta["n_trainable"] is None
    assert not torch.equal(m1.tok_emb.weight, m2.tok_emb.weight)
    assert not torch.equal(m1.blocks[0].mlp.fc.weight, m2.blocks[0].mlp.fc.weight)


def test_greedy_schedule() -> None:
    assert trainable_top_blocks("greedy", 1, first_cycle=True, grew=1) is None
    assert trainable_top_blocks("greedy", 2, first_cycle=False, grew=1) == 1
    assert trainable_top_blocks("greedy", 3, first_cycle=False, grew=1) == 1
    assert trainable_top_blocks("greedy", 4, first_cycle=False, grew=1) == 4  # joint phase
    assert trainable_top_blocks("greedy", 8, first_cycle=False, grew=1) == 4
    assert trainable_top_blocks("greedy", 3, first_cycle=False, grew=2) == 2  # in pairs
    assert trainable_top_blocks("greedy", 5, first_cycle=False, grew=2) == 4  # passed 4
    assert trainable_top_blocks("greedy", 6, first_cycle=False, grew=0) is None  # holding
    assert trainable_top_blocks("greedy", 9, False, grew=1, unfreeze_all=True) is None
    assert trainable_top_blocks("none", 3, first_cycle=False, grew=1) is None


class NoTraining:
    """Stands in for train(): records what the trainer hands it and changes nothing."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, model, data, steps, cfg, seed, **kwargs: Any) -> dict[str, float]:
        self.calls.append({"model": model, "cfg": cfg, **kwargs})
        return {"train_loss": 1.0}


def untrained_cycle(
    tmp_path: Path, two_cycles, monkeypatch, stage: int, grow: int, **train: Any
) -> tuple[NoTraining, Any]:
    """Cycle 2 from cycle 1's checkpoint, in a copy of the workspace, with train() stubbed."""
    ws = tmp_path / "ws"
    shutil.copytree(two_cycles["ws"], ws)
    fake = NoTraining()
    monkeypatch.setattr(progressive, "train", fake)
    settings = make_settings(**train)
    info = CheckpointInfo(checkpoint_file(ws, 1), two_cycles["info1"].sha256, 1, 1)
    ctx = context(ws, two_cycles["store"], settings, 2, info, Recorder())
    ctx.stage, ctx.grow = stage, grow
    return fake, ProgressiveTrainer().train(ctx)


def test_identity_embedded_init(tmp_path: Path, monkeypatch) -> None:
    """First cycle: Word2Vec embeddings, co-occurrence factors and key bias, as computed."""
    from dte_aar.embeddings import cooccurrence_factors, word2vec_embeddings

    fake = NoTraining()
    monkeypatch.setattr(progressive, "train", fake)
    store = FakeStore()
    for i, text in enumerate(TEXTS[:30], start=1):
        store.add(i, text)
    ws = tmp_path / "ws"
    settings = make_settings(cooc_rank=4)
    result = ProgressiveTrainer().train(context(ws, store, settings, 1, None, Recorder()))
    model, meta = load_checkpoint(result.path)
    tok = load_tokenizer(tokenizer_file(ws))
    ids = meta["self_reference_ids"]
    (dte,) = tok.encode("Deep Tree Echo").ids  # one token
    assert dte in ids and tok.encode("I").ids[0] in ids
    seqs = split_documents(PackedTokens(tokens_file(ws, "train")).memmap())
    vocab, d = model.config.vocab_size, model.config.d_model
    w2v = word2vec_embeddings(seqs, vocab, d, seed=11 * 1_000_003 + 1, workers=1)
    assert torch.equal(model.tok_emb.weight, w2v)
    u, v = cooccurrence_factors(seqs, vocab, 4, window=5, seed=11 * 1_000_003 + 1)
    assert torch.equal(model.cooc_u, u) and torch.equal(model.cooc_v, v)
    bias = model.blocks[0].key_bias
    assert torch.allclose(bias[ids], torch.full((len(ids),), math.log(1.2)))
    others = torch.ones(vocab, dtype=torch.bool)
    others[ids] = False
    assert bias[others].abs().max() == 0
    random_init = make_settings(embedding_init="random", cooc_rank=0)
    ws2 = tmp_path / "ws2"
    result = ProgressiveTrainer().train(context(ws2, store, random_init, 1, None, Recorder()))
    plain, _ = load_checkpoint(result.path)
    assert not torch.equal(plain.tok_emb.weight, w2v) and plain.config.cooc_rank == 0


@pytest.mark.parametrize(
    ("stage", "losses"),
    [(1, ["ce", "identity"]), (3, ["ce", "identity", "persona"]),
     (4, ["ce", "identity", "persona", "coherence"])],
)  # fmt: skip
def test_each_stage_trains_its_own_loss_terms(
    tmp_path: Path, two_cycles, monkeypatch, stage: int, losses: list[str]
) -> None:
    fake, result = untrained_cycle(tmp_path, two_cycles, monkeypatch, stage=stage, grow=1)
    objective = fake.calls[0]["objective"]
    assert objective.active() == losses
    assert objective.weight("identity") == 0.1
    assert objective.anchor is not None and objective.anchor.shape == (32,)
    _, meta = load_checkpoint(result.path)
    assert meta["stage"] == stage and meta["losses"] == losses
    assert meta["stage_name"] == make_settings().stages[stage - 1].name
    off = make_settings(identity_loss_weight=0.0)
    assert off.train.identity_loss_weight == 0  # weight 0 switches a term off:
    fake, _ = untrained_cycle(tmp_path / "off", two_cycles, monkeypatch, stage, 1,
                              identity_loss_weight=0.0)  # fmt: skip
    assert "identity" not in fake.calls[0]["objective"].active()


def test_growing_in_pairs_holding_and_refinement_freeze_as_scheduled(
    tmp_path: Path, two_cycles, monkeypatch
) -> None:
    _, pair = untrained_cycle(tmp_path / "a", two_cycles, monkeypatch, stage=2, grow=2)
    _, meta = load_checkpoint(pair.path)
    assert pair.layers == 3 and meta["frozen"] == [True, False, False] and meta["grew"] == 2
    _, hold = untrained_cycle(tmp_path / "b", two_cycles, monkeypatch, stage=1, grow=0)
    _, meta = load_checkpoint(hold.path)
    assert hold.layers == 1 and meta["frozen"] == [False] and meta["growth"] is None
    _, refine = untrained_cycle(tmp_path / "c", two_cycles, monkeypatch, stage=5, grow=1)
    _, meta = load_checkpoint(refine.path)
    assert meta["frozen"] == [False, False] and meta["n_trainable"] is None  # unfreeze_all


def test_activation_cache_in_a_greedy_cycle(tmp_path: Path, two_cycles) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(two_cycles["ws"], ws)
    settings = make_settings(activation_cache=True, steps_per_cycle=3)
    info = CheckpointInfo(checkpoint_file(ws, 1), two_cycles["info1"].sha256, 1, 1)
    result = ProgressiveTrainer().train(
        context(ws, two_cycles["store"], settings, 2, info, Recorder())
    )
    m1, _ = load_checkpoint(info.path)
    m2, meta = load_checkpoint(result.path)
    assert meta["frozen"] == [True, False]
    assert torch.equal(m1.blocks[0].mlp.fc.weight, m2.blocks[0].mlp.fc.weight)
    assert math.isfinite(result.metrics["train_loss"])


def test_prompt_frame() -> None:
    assert format_prompt(" hi ") == "User: hi\nDeep Tree Echo:"
    assert format_prompt("hi", "User: a\nDeep Tree Echo: b").startswith("User: a\nDeep")
    assert reply_only(" I grow.\nUser: and?\nDeep Tree Echo: more") == "I grow."


def test_plugins_register_through_pluggy() -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for module in (progressive, heldout_plugin, checkpoint_plugin):
        pm.register(module)
    got: list[Any] = []
    pm.hook.register_trainers(register=got.append)
    pm.hook.register_evaluators(register=got.append)
    pm.hook.register_generators(register=got.append)
    assert [o.name for o in got] == ["progressive", "heldout", "checkpoint"]
    assert isinstance(got[0], hookspecs.Trainer)
    assert isinstance(got[1], hookspecs.Evaluator)
    assert isinstance(got[2], hookspecs.Generator)


def test_a_rerun_cycle_writes_the_same_checkpoint(tmp_path: Path) -> None:
    """Resume reruns an interrupted train phase; with the same seed it must agree bit for bit."""
    shas = []
    for name in ("a", "b"):
        store = FakeStore()
        for i, text in enumerate(TEXTS[:30], start=1):
            store.add(i, text)
        ws = tmp_path / name
        settings = make_settings(steps_per_cycle=4)
        result = ProgressiveTrainer().train(context(ws, store, settings, 1, None, Recorder()))
        shas.append(sha256_file(result.path))
    assert shas[0] == shas[1]
