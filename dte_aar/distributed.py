"""Training on more than one process: DDP (FSDP for the ``large`` preset) under ``torchrun``.

``dte train --nproc N`` runs ``python -m torch.distributed.run --standalone --nproc_per_node N
-m dte_aar.distributed``. Every rank loads the settings, the arena and the plugins; then:

- rank 0 runs the bootstrap loop exactly as ``dte bootstrap`` does (generate, curate, train,
  evaluate, commit). It alone opens SQLite, packs token files and writes checkpoints.
- ranks 1..N-1 only train. Before rank 0's trainer starts a cycle's training, rank 0
  broadcasts what the trainer needs of the cycle (cycle, stage, grow, the checkpoint to grow
  from); the other ranks build the same context and call the same trainer. Inside it rank 0
  tokenizes and packs the new samples, everyone meets at a barrier, and the others then read
  the tokenizer and packed files rank 0 wrote. A ``None`` broadcast ends the run.

Control messages travel on a gloo group with a long timeout (the others wait while rank 0
generates); gradients on the default group (nccl on CUDA, gloo on CPU).

Each optimizer step every rank draws the *same* global batch (the generator is seeded by
seed and step) and takes its own rows of it; the loss terms divide by the global batch's
counts (:mod:`dte_aar.losses`) and the loss is scaled by the world size, which DDP's gradient
averaging undoes. The result is the single-process run with the same global batch, up to the
order of floating-point sums. Weights start identical on every rank: rank 0's are broadcast
after the model is built (the identity-embedded init, Word2Vec above all, runs on rank 0 only).

FSDP (``fully_shard``, FSDP2) shards every block and the rest of the model across ranks (0-d
parameters, which it refuses, stay replicated with their gradients averaged by hand); the
optimizer is rebuilt over the sharded parameters with its state scattered into them, and rank
0 gathers full weights and optimizer state to write the checkpoint. Tested on CPU with gloo
(same result as one process); not run on GPUs here. The activation cache is off under FSDP.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from dte_aar.hookspecs import CycleContext, Trainer, TrainResult

CONTROL_TIMEOUT = timedelta(days=1)  # the others wait this long for rank 0's next cycle
_control: dist.ProcessGroup | None = None

FSDP_PRESETS = {"large"}  # sharded across ranks; smaller presets replicate (DDP)


# --------------------------------------------------------------------------- who am I
def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each rank takes its own GPU (LOCAL_RANK); CPU stays CPU."""
    if device.type == "cuda" and world()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def init(backend: str | None = None) -> None:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR...)."""
    global _control
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    _control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)


# --------------------------------------------------------------------------- collectives
def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_model(model: nn.Module) -> None:
    """Every rank takes rank 0's weights and buffers (a plain model: before any sharding)."""
    if world()[1] > 1:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank, over the control group."""
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


# --------------------------------------------------------------------------- wrapping
def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def wrap(model: nn.Module) -> nn.Module:
    """The module the training loop calls: DDP around a plain model (the same parameters, so
    the caller's model and optimizer stay valid); an FSDP-sharded model as it is."""
    if world()[1] == 1 or is_sharded(model):
        return model
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def grad_sync(module: nn.Module, enabled: bool):
    """A context: gradients are reduced across ranks only when ``enabled`` (the last
    micro-batch of a step); earlier micro-batches just accumulate locally."""
    if isinstance(module, nn.parallel.DistributedDataParallel) and not enabled:
        return module.no_sync()
    if world()[1] > 1 and is_sharded(module):
        module.set_requires_gradient_sync(enabled)
    return nullcontext()


def average_replicated_grads(model: nn.Module) -> None:
    """Average, over ranks, the gradients of parameters FSDP left out (see :func:`shard`)."""
    for p in getattr(model, "_replicated_params", []):
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world()[1]


def grad_norm(params: list[torch.Tensor], max_norm: float) -> float:
    """Clip to ``max_norm``; return the global norm (a sharded norm is made whole first)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def shard(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
) -> torch.optim.Optimizer:
    """FSDP2: shard each block and the root in place; return a new optimizer over the sharded
    parameters carrying ``optimizer``'s state (each rank keeps its shard of it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    from torch.distributed.fsdp import fully_shard

    state = _named_optimizer_state(model, optimizer)
    # FSDP2 cannot shard 0-d parameters (a block's cooc_alpha): they stay replicated, and
    # average_replicated_grads() reduces their gradients by hand.
    scalars = {p for p in model.parameters() if p.dim() == 0}
    for block in model.blocks:
        fully_shard(block, ignored_params=scalars)
    fully_shard(model, ignored_params=scalars)
    model._replicated_params = [p for p in model.parameters() if p in scalars]
    sharded = make_optimizer(model)
    if state["state"]:
        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(model, sharded, state, options=options)
    return sharded


def gather(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    make_model: Callable[[dict[str, torch.Tensor]], nn.Module],
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
) -> tuple[nn.Module, torch.optim.Optimizer] | None:
    """The inverse of :func:`shard`, for writing a checkpoint: full weights and optimizer
    state as a plain model and optimizer on rank 0 (None elsewhere). Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    optim = get_optimizer_state_dict(model, optimizer, options=options)
    if not is_main():
        return None
    plain = make_model(weights)
    plain_opt = make_optimizer(plain)
    order = {n: i for i, n in enumerate(_param_names(plain, plain_opt))}
    current = plain_opt.state_dict()
    state = {order[name]: s for name, s in optim["state"].items() if name in order}
    plain_opt.load_state_dict({"state": state, "param_groups": current["param_groups"]})
    return plain, plain_opt


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _named_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A plain optimizer's state keyed by parameter name (the form FSDP's helpers take)."""
    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for group in optimizer.param_groups:
        groups.append({**{k: v for k, v in group.items() if k != "params"},
                       "params": [names[id(p)] for p in group["params"]]})  # fmt: skip
    state = {names[id(p)]: s for p, s in optimizer.state.items()}
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------- the run
class Leader:
    """Rank 0's trainer: tells the other ranks to join, then trains alongside them."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.name = trainer.name

    def train(self, ctx: CycleContext) -> TrainResult:
        ckpt = ctx.checkpoint
        broadcast_object(
            {
                "run_id": ctx.run_id,
                "cycle": ctx.cycle,
                "stage": ctx.stage,
                "grow": ctx.grow,
                "checkpoint": None if ckpt is None else
                (str(ckpt.path), ckpt.sha256, ckpt.layers, ckpt.cycle),
            }
        )  # fmt: skip
        return self.trainer.train(ctx)


def follow(trainer: Trainer, settings: Any, workspace: Path, arena: Any) -> None:
    """Ranks 1..N-1: train whenever rank 0 says so, until it says stop (None)."""
    from dte_aar.hookspecs import CheckpointInfo, CycleContext
    from dte_aar.progress import NullProgress

    while (msg := broadcast_object(None)) is not None:
        ckpt = msg["checkpoint"]
        ctx = CycleContext(
            run_id=msg["run_id"],
            cycle=msg["cycle"],
            settings=settings,
            workspace=workspace,
            arena=arena,
            store=None,  # type: ignore[arg-type]  # rank 0 alone touches SQLite
            checkpoint=None if ckpt is None else CheckpointInfo(Path(ckpt[0]), *ckpt[1:]),
            progress=NullProgress(),
            log_metric=lambda name, value, step=None: None,
            plugin_config=lambda name: dict(settings.plugins.get(name, {})),
            stage=msg["stage"],
            grow=msg["grow"],
        )
        trainer.train(ctx)


def run(workspace: Path, cycles: int | None, plugins_dir: Path | None) -> int:
    """One rank's part of ``dte train``: rank 0 the whole loop, the others their training."""
    from rich.console import Console

    from dte_aar import plugins as plugin_loading
    from dte_aar.arena import load_arena
    from dte_aar.config import load_settings
    from dte_aar.cycle import Cycle
    from dte_aar.progress import RichProgress
    from dte_aar.store import Store

    init()
    try:
        settings = load_settings(workspace, cycles=cycles)
        arena = load_arena(settings.arena)
        manager = plugin_loading.load(plugins_dir)
        if not is_main():
            trainer = manager.registry().get("trainer", settings.trainer)
            follow(trainer, settings, workspace, arena)
            return 0
        workspace.mkdir(parents=True, exist_ok=True)
        with Store.open(workspace) as store:
            progress = RichProgress(Console(soft_wrap=True))
            runner = Cycle(settings, workspace, store, manager, arena, progress, say=print)
            runner.trainer = Leader(runner.trainer)
            try:
                with progress:
                    outcomes = runner.run(settings.cycles)
            finally:
                broadcast_object(None)
        for o in (o for o in outcomes if o is not None):
            ppl = o.metrics.get("heldout_ppl", float("nan"))
            print(f"cycle {o.n}: {o.layers} layers, held-out ppl {ppl:.2f}, {o.seconds:.0f}s")
        return 0
    finally:
        dist.destroy_process_group()


def launch(
    nproc: int, workspace: Path, cycles: int | None = None, plugins_dir: Path | None = None
) -> int:
    """Start ``nproc`` ranks of this module with torchrun on this machine; its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "dte_aar.distributed",
           "--workspace", str(workspace)]  # fmt: skip
    if cycles is not None:
        cmd += ["--cycles", str(cycles)]
    env = dict(os.environ)
    if plugins_dir is not None:
        env["DTE_PLUGINS_DIR"] = str(plugins_dir)
    return subprocess.run(cmd, env=env).returncode  # torchrun sets OMP_NUM_THREADS=1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dte_aar.distributed")
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--cycles", type=int)
    args = parser.parse_args(argv)
    plugins_dir = os.environ.get("DTE_PLUGINS_DIR")
    return run(args.workspace, args.cycles, Path(plugins_dir) if plugins_dir else None)


if __name__ == "__main__":
    sys.exit(main())
