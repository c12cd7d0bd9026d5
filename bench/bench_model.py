"""Model benchmarks on CPU, side by side in one run; prints tables and exits 0.

a) training tokens/s: GrowingTransformer vs transformers' GPT2LMHeadModel of the same shape,
   and both as a fraction of this machine's fp32 matmul FLOP/s;
b) the greedy schedule (7 frozen blocks + 1 trainable) and the activation cache vs full
   backprop of the same 8-block model: step time and training memory;
c) the cost of the attention priors (co-occurrence rank 16 + key bias) on a training step.

Timing: the variants of a section alternate step by step; a ratio is the median over rounds
of the two variants' times in the same round, so load from neighbours on this shared machine,
which comes and goes, hits both sides of each ratio alike. Ratios are given in wall time and
in this process's CPU time: with ``--threads 1`` the CPU time is what the step costs whatever
else runs (with more threads it also counts OpenMP's spin-waiting). Each variant's fastest
and median wall time per step are shown; tokens/s and FLOP/s use the fastest, as the matmul
peak does. A section stops early once its time budget is spent (at least 5 rounds).

    python bench/bench_model.py            # the full run, 2-5 minutes on 2 cores
    python bench/bench_model.py --quick    # the same code paths on a smaller shape
    python bench/bench_model.py --threads 1   # less sensitive to other load on the cores
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from gpt2_reference import gpt2_like
from torch import nn

from dte_aar.model import (
    GrowingTransformer,
    ModelConfig,
    config_flops_per_token,
    config_num_params,
)

# The shape of every section (b uses 8 layers), for both models in a).
SHAPE = ModelConfig(
    vocab_size=8192, d_model=256, n_heads=4, d_ff=1024, seq_len=256, n_layers=4, target_layers=8
)
BATCH = 8

Step = Callable[[], None]


@dataclass
class Run:
    warmup: int = 2
    rounds: int = 20
    budget_s: float = 75.0  # per section
    min_rounds: int = 5


@dataclass
class Timing:
    wall: list[float]
    cpu: list[float]

    @property
    def best(self) -> float:
        return min(self.wall)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    def over(self, other: Timing) -> str:
        """Medians of the per-round ratios self / other, wall time and CPU time."""
        wall = statistics.median(a / b for a, b in zip(self.wall, other.wall, strict=True))
        cpu = statistics.median(a / b for a, b in zip(self.cpu, other.cpu, strict=True))
        return f"{wall:.2f} / {cpu:.2f}"


def time_steps(steps: dict[str, Step], run: Run) -> dict[str, Timing]:
    """Seconds per call of each step, the steps interleaved round by round."""
    for _ in range(run.warmup):
        for step in steps.values():
            step()
    times = {name: Timing([], []) for name in steps}
    start = time.perf_counter()
    for i in range(run.rounds):
        for name, step in steps.items():
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            times[name].wall.append(time.perf_counter() - t0)
            times[name].cpu.append(time.process_time() - c0)
        if i + 1 >= run.min_rounds and time.perf_counter() - start > run.budget_s:
            break
    return times


def matmul_flops(n: int, iters: int = 10) -> float:
    """fp32 FLOP/s of an n x n torch.mm, its fastest of ``iters`` calls."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times)


def batch(cfg: ModelConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, cfg.vocab_size, (BATCH, cfg.seq_len + 1), generator=g)
    return seq[:, :-1], seq[:, 1:]


def train_step(model: GrowingTransformer, prefix: torch.Tensor | None = None) -> Step:
    """One AdamW step over the trainable parameters, as the trainer takes it."""
    x, y = batch(model.config)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        _, loss = model(x, y, prefix_hidden=prefix)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for r in [header, ["-" * w for w in widths], *rows]:
        cells = zip(r, widths, strict=True)
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells)))


def ms(t: Timing) -> list[str]:
    return [f"{t.best * 1e3:.0f}", f"{t.median * 1e3:.0f}"]


# ----------------------------------------------------------------------------- a) vs GPT-2
def bench_vs_gpt2(cfg: ModelConfig, run: Run, mm_n: int) -> None:
    torch.manual_seed(0)
    ours = GrowingTransformer(cfg).train()
    gpt2 = gpt2_like(cfg, special_token_id=0).train()
    x, _ = batch(cfg)
    gpt2_opt = torch.optim.AdamW(gpt2.parameters(), lr=1e-4)

    def gpt2_step() -> None:
        # labels are shifted inside GPT-2, so it sees the same next-token targets.
        loss = gpt2(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        gpt2_opt.step()
        gpt2_opt.zero_grad(set_to_none=True)

    times = time_steps({"ours": train_step(ours), "gpt2": gpt2_step}, run)
    peak = matmul_flops(mm_n)
    tokens = BATCH * cfg.seq_len
    flops_tok = config_flops_per_token(cfg)
    rows = []
    for name, key, model in (
        ("GrowingTransformer", "ours", ours),
        ("GPT2LMHeadModel", "gpt2", gpt2),
    ):
        t = times[key]
        achieved = flops_tok * tokens / t.best
        params = sum(p.numel() for p in model.parameters())
        rows.append(
            [name, f"{params / 1e6:.2f}M", *ms(t), f"{tokens / t.best:,.0f}"]
            + [f"{achieved / 1e9:.1f}", f"{achieved / peak:.0%}"]
        )
    table(
        f"a) training step, d {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads, "
        f"seq {cfg.seq_len}, batch {BATCH}, vocab {cfg.vocab_size}; AdamW, full backprop",
        ["model", "params", "best ms", "median ms", "tokens/s", "GFLOP/s", "of mm peak"],
        rows,
    )
    speedup = times["gpt2"].over(times["ours"])
    print(f"speed-up ours / GPT-2, wall / CPU time: {speedup} (target >= 1.2x)")
    print(
        f"fp32 matmul peak ({mm_n}x{mm_n} torch.mm): {peak / 1e9:.1f} GFLOP/s; model FLOPs "
        f"{flops_tok / 1e6:.1f}M/token (6N + attention, config_flops_per_token)"
    )


# ----------------------------------------------------------------------------- b) greedy
def saved_activation_bytes(forward: Callable[[], torch.Tensor], params: set[int]) -> int:
    """Bytes autograd keeps for backward in one forward: every tensor packed by
    saved_tensors_hooks, counted once per storage, parameters left out (they exist anyway)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward()
    del loss
    return sum(seen.values())


def state_bytes(model: nn.Module) -> int:
    """Gradients plus AdamW's two moments of the trainable parameters."""
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def step_flops(cfg: ModelConfig, forward_blocks: int, trainable_blocks: int) -> int:
    """Matmul FLOPs per token of a step that runs ``forward_blocks`` blocks and backprops
    through the top ``trainable_blocks`` (weights and inputs) and the head, which is always
    trainable: the accounting of config_flops_per_token, split by block."""
    head = config_num_params(cfg, non_embedding=True, n_layers=0)  # final norm + head
    block = config_num_params(cfg, non_embedding=True, n_layers=1) - head
    attn_fwd = 4 * cfg.d_model * cfg.seq_len  # q.k and att.v at full context
    fwd = forward_blocks * (2 * block + attn_fwd) + 2 * head
    return fwd + trainable_blocks * (4 * block + 2 * attn_fwd) + 4 * head


def bench_greedy(shape: ModelConfig, run: Run, layers: int = 8) -> None:
    cfg = replace(shape, n_layers=layers, target_layers=layers)
    torch.manual_seed(0)
    full = GrowingTransformer(cfg).train()
    greedy = GrowingTransformer(cfg).train()
    greedy.load_state_dict(full.state_dict())
    greedy.set_trainable(1)
    cached = GrowingTransformer(cfg).train()
    cached.load_state_dict(full.state_dict())
    cached.set_trainable(1)
    x, y = batch(cfg)
    t0 = time.perf_counter()
    prefix = cached.frozen_prefix(x)
    prefix_s = time.perf_counter() - t0

    steps = {"full": train_step(full), "greedy": train_step(greedy)}
    steps["cached"] = train_step(cached, prefix)
    times = time_steps(steps, run)
    ptrs = {p.untyped_storage().data_ptr() for m in (full, greedy, cached) for p in m.parameters()}
    act = {
        "full": saved_activation_bytes(lambda: full(x, y)[1], ptrs),
        "greedy": saved_activation_bytes(lambda: greedy(x, y)[1], ptrs),
        "cached": saved_activation_bytes(lambda: cached(x, y, prefix_hidden=prefix)[1], ptrs),
    }
    state = {
        "full": state_bytes(full),
        "greedy": state_bytes(greedy),
        "cached": state_bytes(cached),
    }
    labels = {
        "full": f"full backprop ({layers} trainable)",
        "greedy": f"greedy ({layers - 1} frozen + 1)",
        "cached": "greedy + activation cache",
    }
    flops = {
        "full": step_flops(cfg, layers, layers),
        "greedy": step_flops(cfg, layers, 1),
        "cached": step_flops(cfg, 1, 1),
    }
    assert flops["full"] == config_flops_per_token(cfg)
    rows = []
    for name, label in labels.items():
        total, total_full = act[name] + state[name], act["full"] + state["full"]
        rows.append(
            [label, *ms(times[name]), times[name].over(times["full"])]
            + [f"{flops[name] / flops['full']:.2f}"]
            + [f"{act[name] / 2**20:.0f}", f"{act[name] / act['full']:.2f}"]
            + [f"{total / 2**20:.0f}", f"{total / total_full:.2f}"]
        )
    table(
        f"b) greedy schedule, {layers} layers, else as a). FLOPs x = the step's matmul FLOPs "
        "over full backprop's; act = activations saved for backward (saved_tensors_hooks, "
        "once per storage, no parameters); +state = + grads and AdamW moments",
        ["step", "best ms", "median ms", "time x wall / cpu", "FLOPs x", "act MiB", "act x"]
        + ["+state MiB", "+state x"],
        rows,
    )
    print(
        "targets: greedy <= 0.5 time and memory, cached <= 0.2 time. The prefix itself: "
        f"{prefix_s * 1e3:.0f} ms once per batch, {prefix.numel() * 4 / 2**20:.0f} MiB kept"
    )


# ----------------------------------------------------------------------------- c) priors
def bench_priors(shape: ModelConfig, run: Run) -> None:
    torch.manual_seed(0)
    off = GrowingTransformer(shape).train()
    on_cfg = replace(shape, cooc_rank=16, key_bias=True)
    on = GrowingTransformer(on_cfg).train()
    V = shape.vocab_size
    on.set_cooc_factors(torch.randn(V, 16), torch.randn(V, 16))
    on.init_key_bias(range(10), 0.18)
    times = time_steps({"off": train_step(off), "on": train_step(on)}, run)
    label = f"cooc_rank 16 + key_bias ({on_cfg.prior_columns} q/k columns more per head)"
    rows = [
        ["no priors", *ms(times["off"]), "1.00 / 1.00"],
        [label, *ms(times["on"]), times["on"].over(times["off"])],
    ]
    table(
        f"c) attention priors, {shape.n_layers} layers, else as a), full backprop",
        ["model", "best ms", "median ms", "time x wall / cpu"],
        rows,
    )
    print("target: <= 1.1x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller shape, 2 timed rounds")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (all cores)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape, run, mm_n = SHAPE, Run(), 2048
    if args.quick:
        shape, run, mm_n = replace(SHAPE, vocab_size=2048, seq_len=64), Run(1, 2, 10.0, 2), 512
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU; load {load}")
    t0 = time.perf_counter()
    bench_vs_gpt2(shape, run, mm_n)
    bench_greedy(shape, run)
    bench_priors(shape, run)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; load average at the end {load}")


if __name__ == "__main__":
    main()
