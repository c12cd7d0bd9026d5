"""Generation speed: KV-cached sampling vs recomputing the prefix, and vs transformers' GPT-2.

One model shape for all (GPT-2 style: d 256, 4 layers, 4 heads, ff 1024, vocab 8192, context
512), random weights, greedy decoding of exactly 256 new tokens after a 32-token prompt:

- ``recompute``: the whole prefix through the model for every new token (no cache);
- ``kv BatchDecoder``: :class:`dte_aar.agent.BatchDecoder`, what the generators and
  `dte serve` use (top-k/top-p/stop strings are host-side and cost nothing here);
- ``kv model.generate``: the model's own cached loop;
- ``hf GPT-2 generate``: transformers' ``GPT2LMHeadModel.generate`` (SDPA, ``use_cache``).

Batch 1 and batch 8. The variants alternate round by round and each reports its best round
(as ``timeit`` does: on a shared machine a neighbour's load only ever adds time, so the
fastest round is the closest to the method's own cost). Also checks that the cached
decoder writes the same tokens as recomputing. Prints tables and exits 0::

    python bench/bench_generation.py            # ~1-2 minutes on 2 cores
    python bench/bench_generation.py --quick    # smaller shape, 64 tokens, seconds
    python bench/bench_generation.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt2_reference import gpt2_like  # noqa: E402

from dte_aar.agent import BatchDecoder, SamplingParams  # noqa: E402
from dte_aar.model import GrowingTransformer, ModelConfig  # noqa: E402

FULL = ModelConfig(vocab_size=8192, d_model=256, n_heads=4, d_ff=1024, seq_len=512, n_layers=4)
QUICK = ModelConfig(vocab_size=2048, d_model=128, n_heads=4, d_ff=512, seq_len=256, n_layers=2)
PROMPT = 32


def ours(cfg: ModelConfig, device: str) -> GrowingTransformer:
    torch.manual_seed(0)
    return GrowingTransformer(cfg).to(device).eval()


def gpt2(cfg: ModelConfig, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = gpt2_like(cfg).to(device).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


@torch.no_grad()
def recompute(model: GrowingTransformer, prompt: torch.Tensor, n: int) -> torch.Tensor:
    idx = prompt
    for _ in range(n):
        logits, _ = model(idx)
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return idx[:, prompt.size(1) :]


def kv_decoder(model: GrowingTransformer, prompt: torch.Tensor, n: int) -> torch.Tensor:
    params = SamplingParams(max_new_tokens=n, temperature=0)
    dec = BatchDecoder(model, prompt.tolist(), params, [0] * prompt.size(0))
    return torch.tensor([dec.step() for _ in range(n)]).T


@torch.no_grad()
def kv_generate(model: GrowingTransformer, prompt: torch.Tensor, n: int) -> torch.Tensor:
    return model.generate(prompt, n, temperature=0)[:, prompt.size(1) :]


@torch.no_grad()
def hf_generate(model: torch.nn.Module, prompt: torch.Tensor, n: int) -> torch.Tensor:
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        use_cache=True,
    )
    return out[:, prompt.size(1) :]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_of(runs: dict[str, Callable[[], object]], rounds: int, device: str) -> dict[str, float]:
    for run in runs.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            sync(device)
            t0 = time.perf_counter()
            run()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: min(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shape, 64 tokens")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    cfg = QUICK if args.quick else FULL
    new = 64 if args.quick else 256
    rounds = args.rounds or (5 if args.quick else 3)
    model, hf = ours(cfg, args.device), gpt2(cfg, args.device)
    print(
        f"shape: d {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads, ff {cfg.d_ff}, "
        f"vocab {cfg.vocab_size}; prompt {PROMPT}, {new} new tokens, greedy; "
        f"device {args.device}, {torch.get_num_threads()} threads; best of {rounds} rounds"
    )
    g = torch.Generator().manual_seed(1)
    for batch in (1, 8):
        prompt = torch.randint(1, cfg.vocab_size, (batch, PROMPT), generator=g).to(args.device)
        same = torch.equal(
            kv_decoder(model, prompt, new).cpu(), recompute(model, prompt, new).cpu()
        )
        runs = {
            "recompute (no cache)": lambda p=prompt: recompute(model, p, new),
            "kv BatchDecoder": lambda p=prompt: kv_decoder(model, p, new),
            "kv model.generate": lambda p=prompt: kv_generate(model, p, new),
            "hf GPT-2 generate": lambda p=prompt: hf_generate(hf, p, new),
        }
        seconds = best_of(runs, rounds, args.device)
        base = seconds["recompute (no cache)"]
        hf_s = seconds["hf GPT-2 generate"]
        print(f"\nbatch {batch}  (cached tokens == recomputed tokens: {'yes' if same else 'NO'})")
        print(f"{'method':<24}{'seconds':>9}{'tokens/s':>11}{'vs recompute':>14}{'vs hf':>8}")
        for name, s in seconds.items():
            rate = batch * new / s
            print(f"{name:<24}{s:>9.3f}{rate:>11.0f}{base / s:>13.2f}x{hf_s / s:>7.2f}x")


if __name__ == "__main__":
    main()
