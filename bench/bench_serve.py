"""`dte serve` under N concurrent streaming clients on loopback: requests/s and latency.

A throwaway workspace holds a random-weight model of the ``tiny`` preset's shape (d 128, 4
blocks, context 128) and a BPE trained on the arena; `dte serve`'s app runs under uvicorn on
a background thread. For N = 1, 4, 16, N async `openai` clients each stream the same number
of chat completions one after another (greedy, ``max_tokens`` fixed, no stop, so every
request writes the same number of tokens) and the run stops by itself. Reported per N:
requests/s, streamed tokens/s, time to first token and end-to-end latency (p50, p95).
Prints a table and exits 0::

    python bench/bench_serve.py            # 48 requests per N, 64 tokens each
    python bench/bench_serve.py --quick    # 8 requests per N, 16 tokens each
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dte_aar.arena import load_arena  # noqa: E402
from dte_aar.checkpoint import save_checkpoint  # noqa: E402
from dte_aar.model import PRESETS, GrowingTransformer  # noqa: E402
from dte_aar.serve import ServeLimits, create_app, running_server  # noqa: E402
from dte_aar.tokenizer import save_tokenizer, tokenizer_hash, train_tokenizer  # noqa: E402

MESSAGES = [{"role": "user", "content": "Tell me how your reservoir remembers."}]


def workspace(root: Path) -> Path:
    """A tokenizer and one random-weight checkpoint: all `dte serve` needs."""
    from dataclasses import replace

    tok = train_tokenizer([e.text for e in load_arena("deep_tree_echo").seed], 512)
    save_tokenizer(tok, root / "tokenizer.json")
    cfg = replace(PRESETS["tiny"], vocab_size=tok.get_vocab_size(), n_layers=4)
    torch.manual_seed(0)
    model = GrowingTransformer(cfg)
    path = root / "checkpoints" / "bench.safetensors"
    save_checkpoint(path, model, {"tokenizer_hash": tokenizer_hash(tok)})
    return path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one_request(client, max_tokens: int) -> tuple[float, float, int]:
    """(time to first token, total seconds, completion tokens) of one streamed chat."""
    t0 = time.perf_counter()
    first = None
    tokens = 0
    stream = await client.chat.completions.create(
        model="dte",
        messages=MESSAGES,
        max_tokens=max_tokens,
        temperature=0,
        stop=[],
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - t0
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return first or 0.0, time.perf_counter() - t0, tokens


async def level(url: str, n: int, per_client: int, max_tokens: int) -> dict[str, float]:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="bench", max_retries=0)

    async def worker() -> list[tuple[float, float, int]]:
        return [await one_request(client, max_tokens) for _ in range(per_client)]

    t0 = time.perf_counter()
    results = [r for rs in await asyncio.gather(*(worker() for _ in range(n))) for r in rs]
    wall = time.perf_counter() - t0
    await client.close()
    ttft = [r[0] for r in results]
    total = [r[1] for r in results]
    return {
        "requests": len(results),
        "req_s": len(results) / wall,
        "tok_s": sum(r[2] for r in results) / wall,
        "ttft_p50": statistics.median(ttft),
        "ttft_p95": percentile(ttft, 0.95),
        "lat_p50": statistics.median(total),
        "lat_p95": percentile(total, 0.95),
        "tokens": statistics.mean(r[2] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 requests per N, 16 tokens")
    parser.add_argument("--levels", default="1,4,16", help="comma-separated client counts")
    args = parser.parse_args()
    total = 8 if args.quick else 48
    max_tokens = 16 if args.quick else 64
    levels = [int(n) for n in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = workspace(root)
        limits = ServeLimits(max_concurrent=max([*levels, 4]), max_tokens=max_tokens)
        with running_server(create_app(root, checkpoint, limits=limits)) as url:
            asyncio.run(level(url, 4, 2, max_tokens))  # warm-up: threads, kernels, shapes
            print(
                f"dte serve, tiny shape (d 128, 4 blocks), {total} streamed chat requests per "
                f"N, {max_tokens} tokens each, greedy; {torch.get_num_threads()} torch threads"
            )
            head = ("N", "req/s", "tok/s", "tok/req", "ttft p50", "ttft p95", "lat p50", "lat p95")
            print("".join(f"{h:>10}" for h in head))
            for n in levels:
                r = asyncio.run(level(url, n, max(1, total // n), max_tokens))
                print(
                    f"{n:>10}{r['req_s']:>10.2f}{r['tok_s']:>10.0f}{r['tokens']:>10.1f}"
                    f"{r['ttft_p50']:>9.3f}s{r['ttft_p95']:>9.3f}s"
                    f"{r['lat_p50']:>9.3f}s{r['lat_p95']:>9.3f}s"
                )


if __name__ == "__main__":
    main()
