"""Two CPU ranks (gloo) train exactly as one process does with the same global batch: DDP,
with gradient accumulation on each rank, FSDP2 (sharded, then gathered on rank 0), and the
whole `dte train --nproc 2` path against `dte bootstrap`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dte_aar import distributed
from dte_aar.agent import checkpoint_file
from dte_aar.checkpoint import load_checkpoint
from dte_aar.config import TrainSettings
from dte_aar.losses import Objective, identity_anchor, token_weights
from dte_aar.model import GrowingTransformer, ModelConfig
from dte_aar.store import Store
from dte_aar.tokens import PackedTokens
from dte_aar.train import micro_batching, train
from helpers import run_dte

CFG = ModelConfig(vocab_size=40, d_model=32, n_heads=2, d_ff=64, seq_len=16, n_layers=2,
                  cooc_rank=4, key_bias=True)  # fmt: skip
# Global batch 8 = 2 ranks x 2 micro-batches x 2 sequences.
SETTINGS = TrainSettings(batch_size=8, micro_batch_size=2, lr=1e-2, warmup_steps=2, seq_len=16)
STEPS = 5


def make_data(path: Path) -> PackedTokens:
    packed = PackedTokens(path, vocab_size=CFG.vocab_size)
    packed.append([(i, list(range(1 + i % 5, 1 + i % 5 + 12))) for i in range(60)])
    return packed


def make_model() -> GrowingTransformer:
    m = GrowingTransformer(CFG, generator=torch.Generator().manual_seed(0))
    m.set_trainable(1)  # a frozen block below, as in the greedy schedule
    return m


def make_objective(m: GrowingTransformer, data: PackedTokens) -> Objective:
    ids = [3, 4, 5]
    anchor, self_anchor = identity_anchor(m, data.memmap()[:200], ids)
    return Objective(token_weights(CFG.vocab_size, ids, 1.2), torch.tensor(ids), anchor,
                     self_anchor, identity=0.1, persona=0.05, coherence=0.05)  # fmt: skip


def make_sgd(m: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum: AdamW's 1/sqrt(v) would blow float rounding in ~0 gradients up to
    lr-sized differences (see test_train's accumulation test); the gradients are what count."""
    return torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-2, momentum=0.9)


def run(data: PackedTokens, shard: bool = False) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train STEPS steps; returns the full weights (rank 0) and the logged losses."""
    m = make_model()
    obj = make_objective(m, data)
    opt = make_sgd(m)
    if shard:
        opt = distributed.shard(m, opt, make_sgd)
    losses: list[float] = []
    log = lambda name, value, step: losses.append(value) if name == "train_loss" else None  # noqa: E731
    rows: list[int] = []  # sequences this process ran forward
    m.register_forward_pre_hook(lambda mod, args: rows.append(args[0].size(0)))
    train(m, data, STEPS, SETTINGS, seed=9, optimizer=opt, objective=obj, log_metric=log)
    micro = SETTINGS.micro_batch_size or 0
    assert rows == [micro] * (STEPS * SETTINGS.batch_size // micro // dist_size())
    if shard:
        whole = distributed.gather(m, opt, _plain, make_sgd)
        return ({} if whole is None else whole[0].state_dict()), losses
    return m.state_dict(), losses


def dist_size() -> int:
    return distributed.world()[1]


def _plain(weights: dict[str, torch.Tensor]) -> GrowingTransformer:
    m = make_model()
    m.load_state_dict(weights)
    return m


def _worker(rank: int, world: int, init_file: str, data_path: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)  # fmt: skip
    try:
        data = PackedTokens(Path(data_path))
        for kind in ("ddp", "fsdp"):
            weights, losses = run(data, shard=kind == "fsdp")
            if rank == 0:
                torch.save(weights, Path(out) / f"{kind}.pt")
                (Path(out) / f"{kind}.json").write_text(json.dumps(losses))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path: Path) -> None:
    data = make_data(tmp_path / "train.bin")
    want, want_losses = run(data)
    assert len(want_losses) == STEPS and all(math.isfinite(v) for v in want_losses)
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(data.path), str(tmp_path)), nprocs=2)
    for kind in ("ddp", "fsdp"):
        got = torch.load(tmp_path / f"{kind}.pt")
        losses = json.loads((tmp_path / f"{kind}.json").read_text())
        assert losses == pytest.approx(want_losses, abs=1e-5), kind
        assert set(got) == set(want), kind
        for name, tensor in want.items():
            torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-5, msg=f"{kind} {name}")


def test_each_rank_takes_its_share_of_the_global_batch() -> None:
    assert micro_batching(8, 2, world=2) == (2, 2)
    assert micro_batching(8, None, world=2) == (4, 1)
    assert micro_batching(8, 16, world=1) == (8, 1)
    with pytest.raises(ValueError, match="ranks"):
        micro_batching(6, None, world=4)


def test_outside_torchrun_it_is_one_process() -> None:
    assert distributed.world() == (0, 1) and distributed.is_main()
    m = make_model()
    assert distributed.wrap(m) is m
    distributed.barrier()  # no-ops
    t = torch.ones(2)
    assert distributed.all_reduce_sum(t) is t and t.tolist() == [1.0, 1.0]


E2E_CONFIG = """\
seed = 7
[train]
steps_per_cycle = 4
batch_size = 4
seq_len = 32
vocab_size = 400
warmup_steps = 1
[plugins.progressive]
d_model = 32
n_heads = 2
d_ff = 64
"""


def test_dte_train_on_two_ranks_matches_dte_bootstrap(tmp_path: Path) -> None:
    """The whole path: torchrun, rank 0's loop, the other rank joining the train phase
    (Word2Vec on rank 0, weights broadcast, packed files shared): one cycle on two ranks
    writes the checkpoint one process writes."""
    for name in ("two", "one"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "dte.toml").write_text(E2E_CONFIG)
    two = run_dte("train", "--nproc", "2", "--cycles", "1", "-w", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert "cycle 0: 1 layers, held-out ppl" in two.stdout
    one = run_dte("bootstrap", "--cycles", "1", "-w", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    got, _ = load_checkpoint(checkpoint_file(tmp_path / "two", 0))
    want, _ = load_checkpoint(checkpoint_file(tmp_path / "one", 0))
    for (name, a), b in zip(want.state_dict().items(), got.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4, msg=name)
    losses = []
    for name in ("two", "one"):
        with Store.open(tmp_path / name, readonly=True) as store:
            assert [c["status"] for c in store.cycles()] == ["done"]
            assert store.latest_checkpoint() is not None
            rows = store.db.execute(
                "select value from metrics where name = 'train_loss' and step is not null "
                "order by step"
            ).fetchall()
            losses.append([r[0] for r in rows])
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_dte_train_refuses_a_batch_the_ranks_cannot_share(workspace: Path) -> None:
    result = run_dte("train", "--nproc", "3", "-w", str(workspace))  # batch_size 8
    assert result.returncode == 2 and "does not split over 3 ranks" in result.stderr
