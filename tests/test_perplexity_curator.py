"""The perplexity curator against a tiny model trained here on the seed (and on one loop, as a
young model that has started repeating itself would be)."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dte_aar.agent import tokenizer_file
from dte_aar.arena import heldout, load_arena
from dte_aar.checkpoint import save_checkpoint
from dte_aar.config import Settings, TrainSettings
from dte_aar.hookspecs import CheckpointInfo, Sample
from dte_aar.model import GrowingTransformer, ModelConfig
from dte_aar.store import Store
from dte_aar.tokenizer import save_tokenizer, tokenizer_hash, train_tokenizer
from dte_aar.tokens import PackedTokens
from dte_aar.train import train
from dte_aar_plugins.perplexity import PerplexityCurator, repeated_ngrams

LOOP = "I echo. " * 40
_rng = random.Random(0)
GARBAGE = [
    "".join(chr(_rng.randrange(0x4E00, 0x4E00 + 2000)) for _ in range(60)),
    "".join(_rng.choice("ÿþ€¤§¶×÷ØæðÞ±¿¡") for _ in range(120)),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one thread is faster than two, and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread) -> SimpleNamespace:
    """Workspace, store with the seed (held-out split marked) and a checkpoint: ~5 s on CPU."""
    ws = tmp_path_factory.mktemp("ws")
    arena = load_arena("deep_tree_echo")
    settings = Settings()
    rows = [
        {
            "source": "seed",
            "origin": e.origin,
            "text": e.text,
            "split": "heldout" if heldout(e.origin, settings.seed, 0.1) else "train",
        }
        for e in arena.seed
    ]
    with Store.open(ws) as store:
        store.add_samples(rows)
    texts = [r["text"] for r in rows if r["split"] == "train"]
    tok = train_tokenizer(texts, 512, phrases=arena.identity.self_reference)
    save_tokenizer(tok, tokenizer_file(ws))
    data = PackedTokens(ws / "train.bin", vocab_size=tok.get_vocab_size())
    data.append(enumerate(e.ids for e in tok.encode_batch(texts + [LOOP] * 8)))
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), d_model=64, n_heads=2, d_ff=128, seq_len=64)
    model = GrowingTransformer(cfg, generator=torch.Generator().manual_seed(0))
    train(
        model, data, 250, TrainSettings(batch_size=8, lr=1e-2, warmup_steps=3, seq_len=64), seed=0
    )
    path = ws / "checkpoints" / "cycle-0001.safetensors"
    sha = save_checkpoint(path, model, {"tokenizer_hash": tokenizer_hash(tok)})
    heldout_texts = [r["text"] for r in rows if r["split"] == "heldout"]
    return SimpleNamespace(
        ws=ws,
        arena=arena,
        settings=settings,
        ckpt=CheckpointInfo(path, sha, 1, 1),
        heldout=heldout_texts,
    )


def ctx_for(t: SimpleNamespace, store: Store, checkpoint="default", config=None, metrics=None):
    return SimpleNamespace(
        arena=t.arena,
        workspace=t.ws,
        settings=t.settings,
        store=store,
        checkpoint=t.ckpt if checkpoint == "default" else checkpoint,
        plugin_config=lambda name: dict(config or {}),
        log_metric=lambda name, value, step: (metrics if metrics is not None else []).append(
            (name, value)
        ),
    )


def samples(texts: list[str]) -> list[Sample]:
    return [Sample(100 + i, t, "generated", "g", "p", str(i)) for i, t in enumerate(texts)]


def test_keeps_everything_before_the_first_checkpoint(trained) -> None:
    with Store.open(trained.ws) as store:
        verdicts = list(PerplexityCurator().curate(samples(GARBAGE), ctx_for(trained, store, None)))
    assert all(
        v.keep and v.reason == "no checkpoint yet: perplexity not measured" for v in verdicts
    )


def test_keeps_held_out_text_rejects_noise_and_loops(trained) -> None:
    metrics: list = []
    texts = trained.heldout[:6] + GARBAGE + [LOOP]
    with Store.open(trained.ws) as store:
        verdicts = list(
            PerplexityCurator().curate(samples(texts), ctx_for(trained, store, metrics=metrics))
        )
    n = len(trained.heldout[:6])
    assert n >= 4
    assert all(v.keep and v.reason.startswith("plausible: loss") for v in verdicts[:n]), [
        v.reason for v in verdicts[:n]
    ]
    for v in verdicts[n : n + len(GARBAGE)]:
        assert not v.keep and v.reason.startswith("implausible: loss"), v.reason
        assert "vs heldout" in v.reason and 0 <= v.score < 1
    loop = verdicts[-1]
    assert not loop.keep and loop.reason.startswith("degenerate loop:"), loop.reason
    assert repeated_ngrams(list(range(5)) * 10) > 0.8 and repeated_ngrams(list(range(50))) == 0
    ((name, ref),) = metrics
    assert name == "perplexity_reference_loss" and 1 < ref < 6.3  # below ln(512): it learned


def test_thresholds_are_configurable(trained) -> None:
    text = trained.heldout[0]
    with Store.open(trained.ws) as store:
        lenient = {"max_ratio": 1e6, "loop_ratio": 1e-6}
        kept = list(
            PerplexityCurator().curate(
                samples(GARBAGE + [LOOP]), ctx_for(trained, store, config=lenient)
            )
        )
        strict = list(
            PerplexityCurator().curate(
                samples([text]), ctx_for(trained, store, config={"max_loss": 0.5})
            )
        )
    assert all(v.keep for v in kept), [v.reason for v in kept]
    assert not strict[0].keep and "> 0.50" in strict[0].reason


def test_calibrates_on_the_train_split_when_nothing_is_held_out(trained, tmp_path: Path) -> None:
    with Store.open(trained.ws) as store:
        store.db.execute("update samples set split = 'train'")
        try:
            (v,) = PerplexityCurator().curate(
                samples([trained.heldout[0]]), ctx_for(trained, store)
            )
        finally:
            store.db.conn.rollback()
    assert v.keep and "vs train" in v.reason
