"""Cost of the identity-embedded init on CPU: BPE, Word2Vec and co-occurrence factors.

The corpus is the Python standard library's own source (code and docstrings), read in a fixed
order, so anyone can rerun the numbers. Prints a table and exits 0::

    python bench/bench_embeddings.py           # ~4 MB for Word2Vec, ~2M tokens for the prior
    python bench/bench_embeddings.py --quick   # ~1 MB and ~0.5M tokens

The co-occurrence build runs in a fresh, warmed-up child process so its peak RSS is its own.
Timings move with machine load; compare runs made on an idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dte_aar.arena import load_arena  # noqa: E402
from dte_aar.embeddings import cooccurrence_factors, word2vec_embeddings  # noqa: E402
from dte_aar.tokenizer import train_tokenizer  # noqa: E402

SKIP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3"}


def stdlib_text(n_bytes: int) -> list[str]:
    """Whole stdlib modules, sorted by path, until ``n_bytes`` characters are gathered."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if SKIP & set(path.relative_to(root).parts):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        total += len(text)
        if total >= n_bytes:
            break
    return texts


def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS) or its peak (VmHWM), in MiB, from /proc (Linux).

    Not ru_maxrss: Linux carries that over from the parent process through fork and exec.
    Elsewhere it falls back to ru_maxrss, which only ever grows.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start VmHWM again from the current RSS, where the kernel allows it."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def cooc_child(tokens_path: str, vocab: int, rank: int, window: int) -> None:
    """Build the factors from a saved token file; print time and memory as JSON."""
    ids = np.load(tokens_path)
    seqs = [ids[i : i + 1024] for i in range(0, len(ids), 1024)]
    # Warm up first: BLAS thread buffers and lazily loaded code are a fixed cost, not the build's.
    cooccurrence_factors([ids[:20_000]], vocab, rank=rank, window=window)
    reset_peak_rss()
    base = rss_mb()
    tracemalloc.start()
    t0 = time.perf_counter()
    u, _ = cooccurrence_factors(seqs, vocab, rank=rank, window=window)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print(
        json.dumps(
            {
                "s": seconds,
                "traced_mb": peak,
                "rss_delta_mb": rss_mb("VmHWM") - base,
                "shape": list(u.shape),
            }
        )
    )


def bpe(texts: list[str], vocab: int, phrases: list[str]) -> tuple[Tokenizer, list, float, float]:
    """Train on ``texts`` and encode them: tokenizer, id lists, train and encode seconds."""
    t0 = time.perf_counter()
    tok = train_tokenizer(texts, vocab, phrases)
    trained = time.perf_counter() - t0
    t0 = time.perf_counter()
    seqs = [e.ids for e in tok.encode_batch(texts)]
    return tok, seqs, trained, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller corpus, well under 1 min")
    parser.add_argument("--dim", type=int, default=128, help="Word2Vec dimension (tiny: 128)")
    parser.add_argument("--child-cooc", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_cooc:
        path, vocab, rank, window = args.child_cooc
        cooc_child(path, int(vocab), int(rank), int(window))
        return 0

    mb = 1 if args.quick else 4
    cooc_tokens = 500_000 if args.quick else 2_000_000
    workers = os.cpu_count() or 1
    phrases = load_arena("deep_tree_echo").identity.self_reference
    rows: list[tuple[str, str]] = []
    print(f"stdlib corpus, {workers} CPU threads, torch/gensim/scipy on CPU", flush=True)

    texts = stdlib_text(mb * 1_000_000)
    for vocab in (8192, 50_257):
        tok, seqs, trained, encoded = bpe(texts, vocab, phrases)
        n = sum(map(len, seqs))
        tag = f"BPE {vocab} ({tok.get_vocab_size()} tokens), {mb} MB"
        rows.append((f"{tag}: train / encode", f"{trained:.1f} s / {encoded:.1f} s, {n:,} tokens"))
        t0 = time.perf_counter()
        emb = word2vec_embeddings(seqs, tok.get_vocab_size(), args.dim, seed=0, workers=workers)
        w2v = time.perf_counter() - t0
        counts = np.bincount(
            np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]), minlength=len(emb)
        )
        rows.append(
            (
                f"Word2Vec dim {args.dim}, {tag}",
                f"{w2v:.1f} s = {w2v / n * 1e6:.1f} s per 1M tokens, "
                f"{(counts >= 2).sum():,} tokens learned",
            )
        )
        print(f"  {rows[-2][0]}: {rows[-2][1]}\n  {rows[-1][0]}: {rows[-1][1]}", flush=True)

    # Co-occurrence prior: a 50k BPE over more stdlib text, cut at ~cooc_tokens tokens. The
    # stdlib alone may not fill 50k merges; the matrix is 50,257 square either way.
    vocab, rank, window = 50_257, 16, 5
    tok, seqs, trained, _ = bpe(stdlib_text(cooc_tokens * 4), vocab, phrases)
    ids = np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs])[:cooc_tokens]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ids.npy"
        np.save(path, ids)
        cmd = [sys.executable, __file__, "--child-cooc", str(path), str(vocab), str(rank)]
        out = subprocess.run([*cmd, str(window)], check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    dense_gib = vocab * vocab * 8 / 2**30
    rows.append(
        (
            f"Co-occurrence U,V: vocab {vocab:,} ({len(np.unique(ids)):,} used), rank {rank}, "
            f"window {window}, {len(ids):,} tokens",
            f"{res['s']:.1f} s, traced peak {res['traced_mb']:.0f} MiB, RSS +"
            f"{res['rss_delta_mb']:.0f} MiB (a dense V x V float64: {dense_gib:.0f} GiB)",
        )
    )

    width = max(len(k) for k, _ in rows)
    print(f"\n| {'measurement':<{width}} | result")
    print(f"|{'-' * (width + 2)}|{'-' * 60}")
    for key, value in rows:
        print(f"| {key:<{width}} | {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
