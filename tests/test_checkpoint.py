"""Checkpoints: exact round trip, optimizer state carried across growth, every kind of damage
reported as a one-line CheckpointError, and no pickle on either side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dte_aar.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_optimizer_state,
    optimizer_path,
    save_checkpoint,
    sha256_file,
    sidecar_path,
)
from dte_aar.model import GrowingTransformer, ModelConfig

CFG = ModelConfig(vocab_size=61, d_model=16, n_heads=2, d_ff=32, seq_len=8, n_layers=2)


@pytest.fixture(autouse=True)
def _no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle-based torch.save/torch.load used")

    monkeypatch.setattr(torch, "save", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def trained(steps: int = 2) -> tuple[GrowingTransformer, torch.optim.AdamW]:
    model = GrowingTransformer(CFG, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, CFG.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        opt.zero_grad()
        model(x, x)[1].backward()
        opt.step()
    return model, opt


def saved(tmp_path: Path) -> tuple[Path, str, GrowingTransformer]:
    model, opt = trained()
    model.set_trainable(1)
    path = tmp_path / "checkpoints" / "cycle-0001.safetensors"
    sha = save_checkpoint(path, model, {"cycle": 1, "step": 2, "tokenizer_hash": "abc"}, opt)
    return path, sha, model


def test_round_trip_is_exact(tmp_path: Path) -> None:
    path, sha, model = saved(tmp_path)
    assert sha == sha256_file(path)
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "cycle-0001.json",
        "cycle-0001.optim.safetensors",
        "cycle-0001.safetensors",
    ]
    loaded, meta = load_checkpoint(path, expected_sha256=sha)
    assert loaded.config == model.config
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert loaded.frozen_mask() == [True, False] == meta["frozen"]
    assert not loaded.tok_emb.weight.requires_grad and loaded.head.weight.requires_grad
    assert meta["cycle"] == 1 and meta["step"] == 2 and meta["tokenizer_hash"] == "abc"
    assert meta["layers"] == 2 and meta["params"] == model.num_params()
    x = torch.randint(0, CFG.vocab_size, (1, 8))
    torch.testing.assert_close(loaded(x)[0], model(x)[0], rtol=0, atol=0)


def test_optimizer_state_survives_growth_for_the_kept_params(tmp_path: Path) -> None:
    path, _, _ = saved(tmp_path)
    old_model, old_opt = trained()  # the same run as the one saved
    model, _ = load_checkpoint(path)
    model.grow()
    model.set_trainable(None)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.3)
    restored = load_optimizer_state(path, model, opt)
    kept = [n for n, _ in model.named_parameters() if not n.startswith("blocks.2.")]
    assert restored == len(kept)
    old_state = {n: old_opt.state[p] for n, p in old_model.named_parameters()}
    for name, p in model.named_parameters():
        state = opt.state.get(p, {})
        if name.startswith("blocks.2."):
            assert not state  # the new block starts fresh
            continue
        assert torch.equal(state["exp_avg"], old_state[name]["exp_avg"]), name
        assert torch.equal(state["exp_avg_sq"], old_state[name]["exp_avg_sq"]), name
        assert float(state["step"]) == 2.0
    assert opt.param_groups[0]["lr"] == 5e-3 and opt.param_groups[0]["weight_decay"] == 0.3
    x = torch.randint(0, CFG.vocab_size, (2, 8))
    model(x, x)[1].backward()
    opt.step()  # the restored state is usable
    assert float(opt.state[model.head.weight]["step"]) == 3.0
    assert float(opt.state[model.blocks[2].mlp.proj.weight]["step"]) == 1.0


def test_without_optimizer_nothing_to_restore(tmp_path: Path) -> None:
    model, _ = trained()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model, {})
    assert not optimizer_path(path).exists()
    opt = torch.optim.AdamW(model.parameters())
    assert load_optimizer_state(path, model, opt) == 0


def _one_line(exc: pytest.ExceptionInfo[CheckpointError], path: Path) -> str:
    message = str(exc.value)
    assert "\n" not in message and path.name in message
    return message


def test_truncated_weights(tmp_path: Path) -> None:
    path, sha, _ = saved(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert "truncated or corrupt" in _one_line(exc, path)


def test_corrupt_weights_flipped_byte(tmp_path: Path) -> None:
    path, sha, _ = saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path, expected_sha256=sha)
    assert "sha256" in _one_line(exc, path)


def test_mismatched_expected_sha(tmp_path: Path) -> None:
    path, _, _ = saved(tmp_path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path, expected_sha256="0" * 64)
    assert "registered" in _one_line(exc, path)


def test_missing_files(tmp_path: Path) -> None:
    path, _, model = saved(tmp_path)
    optimizer_path(path).unlink()
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(CheckpointError, match="optimizer state file missing"):
        load_optimizer_state(path, model, opt)
    path.unlink()
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert "weights file missing" in _one_line(exc, path)
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match="sidecar missing"):
        load_checkpoint(path)


def test_corrupt_optimizer_state(tmp_path: Path) -> None:
    path, _, model = saved(tmp_path)
    opt_file = optimizer_path(path)
    opt_file.write_bytes(opt_file.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="optimizer state sha256"):
        load_optimizer_state(path, model, torch.optim.AdamW(model.parameters()))


def test_bad_sidecars(tmp_path: Path) -> None:
    path, _, _ = saved(tmp_path)
    side = sidecar_path(path)
    good = json.loads(side.read_text())
    side.write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable sidecar"):
        load_checkpoint(path)
    side.write_text(json.dumps({**good, "format": "other"}))
    with pytest.raises(CheckpointError, match="not a dte-aar-checkpoint"):
        load_checkpoint(path)
    # A sidecar describing another shape than the weights (checksum right, model wrong).
    side.write_text(json.dumps({**good, "config": {**good["config"], "n_layers": 3}}))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path)


def test_overwrite_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path, first, model = saved(tmp_path)
    model.grow()
    second = save_checkpoint(path, model, {"cycle": 1})
    assert second != first
    assert load_checkpoint(path, second)[1]["layers"] == 3
    assert not optimizer_path(path).exists()  # stale optimizer state removed
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]
