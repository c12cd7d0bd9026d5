"""GPU training throughput and MFU of the `small` preset; writes bench/results/gpu.json.

One prepared run for a CUDA machine (under 4 minutes): the `small` preset's width (d 768,
12 heads, ff 3072, vocab 50257, seq 1024, the attention priors on as the trainer builds them)
at 12 and 4 blocks, all trainable and greedy (11 frozen + 1), eager and ``torch.compile``d.
Each step is the trainer's: bf16 autocast, the model's cross-entropy, gradient clipping, fused
AdamW (``configure_optimizer``). It also proves the attention runs on flash attention: the
model's forward and backward under ``sdpa_kernel(SDPBackend.FLASH_ATTENTION)`` (which raises if
flash cannot take the call), and the kernels a default forward launches (profiler).

MFU = FLOPs per token (``dte_aar.flops``: frozen blocks forward-only, attention at full
context) x tokens/s / the GPU's dense bf16 peak (``dte_aar.plan.GPUS``). The peak memory of
the timed steps is recorded beside ``dte plan``'s estimate for the same shape. ``mfu`` in the
JSON is the best 12-block all-trainable run: the value ``dte plan`` uses by default.

    python bench/bench_gpu.py              # on a CUDA machine; exits 0 with a message if none
    python bench/bench_gpu.py --quick      # 4 blocks only, fewer steps
    python bench/bench_gpu.py --cpu-smoke --peak-tflops 0.1 --out /tmp/gpu.json
                                           # the same code on CPU, a tiny shape (a check)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from dte_aar.config import TrainSettings
from dte_aar.flops import StepShape, flops_per_token
from dte_aar.model import PRESETS, GrowingTransformer, ModelConfig
from dte_aar.plan import GPUS, memory
from dte_aar.train import configure_optimizer

RESULTS = Path(__file__).resolve().parent / "results" / "gpu.json"
COMPILE_BUDGET_S = 75.0  # what one torch.compile run may take, compile included


@dataclass(frozen=True)
class Case:
    blocks: int
    trainable_top: int | None  # None: everything trains
    compile: bool

    @property
    def label(self) -> str:
        train = "all" if self.trainable_top is None else f"top {self.trainable_top}"
        return f"{self.blocks} blocks, {train} trainable, {'compile' if self.compile else 'eager'}"


FULL = [  # most important first: a run that hits the time budget keeps these
    Case(12, None, False),
    Case(12, None, True),
    Case(12, 1, False),
    Case(4, None, False),
    Case(4, None, True),
    Case(12, 1, True),
]
QUICK = [Case(4, None, False), Case(4, None, True)]
SMOKE = [Case(2, None, False), Case(3, 1, False)]


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU ``dte plan`` knows, from its name."""
    name = device_name.upper().replace(" ", "")
    if "H100" in name and "PCIE" in name:
        return 756.0  # the PCIe card's dense bf16 peak, not the SXM's
    for key, gpu in GPUS.items():
        if key.replace("RTX", "") in name:
            return gpu.peak_tflops
    return None


def shape(cpu_smoke: bool) -> ModelConfig:
    if cpu_smoke:
        return ModelConfig(
            vocab_size=512, d_model=64, n_heads=2, d_ff=256, seq_len=64, cooc_rank=4, key_bias=True
        )
    return replace(PRESETS["small"], cooc_rank=TrainSettings().cooc_rank, key_bias=True)


def flash_check(cfg: ModelConfig, device: torch.device) -> dict[str, Any]:
    """Is flash attention enabled, does the model's own SDPA call run on it, and which
    attention kernels does a default (unforced) forward launch?"""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    out: dict[str, Any] = {"flash_sdp_enabled": torch.backends.cuda.flash_sdp_enabled()}
    model = GrowingTransformer(replace(cfg, n_layers=2)).to(device)
    x = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION), autocast:
            _, loss = model(x, x)
        loss.backward()
        out["model_runs_on_flash"] = True
    except RuntimeError as exc:  # "No available kernel": flash cannot take this call
        out["model_runs_on_flash"] = False
        out["flash_error"] = str(exc).splitlines()[0][:300]
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof, autocast, torch.no_grad():
            model(x)
            torch.cuda.synchronize()
        names = {e.key for e in prof.key_averages()}
        hints = ("flash", "fmha", "attention", "cudnn", "sdpa", "efficient")
        out["default_attention_kernels"] = sorted(
            n[:120] for n in names if any(h in n.lower() for h in hints)
        )
    except Exception as exc:  # the profiler is a nicety; its failure must not end the run
        out["default_attention_kernels"] = f"profiler failed: {type(exc).__name__}: {exc}"
    return out


def run_case(
    case: Case, cfg: ModelConfig, device: torch.device, batch: int, steps: int, peak: float | None
) -> dict[str, Any]:
    """Time ``steps`` training steps (after warm-up, compile included in it) of one case."""
    torch.manual_seed(0)
    mcfg = replace(cfg, n_layers=case.blocks)
    model = GrowingTransformer(mcfg).to(device)
    model.set_trainable(case.trainable_top)
    model.train()
    optimizer = configure_optimizer(model, TrainSettings())  # fused on CUDA
    params = [p for p in model.parameters() if p.requires_grad]
    module = torch.compile(model) if case.compile else model
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, mcfg.vocab_size, (batch, mcfg.seq_len + 1), generator=g)
    x, y = seq[:, :-1].to(device), seq[:, 1:].to(device)

    def step() -> None:
        with autocast:
            logits, loss = module(x, y)  # logits held through backward, as the trainer does
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del logits

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    step()  # compiles, if compiling
    sync()
    first_s = time.perf_counter() - t0
    for _ in range(2):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / steps
    tokens_s = batch * mcfg.seq_len / seconds
    per_token = flops_per_token(mcfg, StepShape(case.blocks, case.trainable_top))
    estimate = memory(mcfg, case.blocks, case.trainable_top, batch).total
    peak_mem = torch.cuda.max_memory_allocated() if cuda else None
    return {
        "case": case.label,
        "blocks": case.blocks,
        "trainable_top": case.trainable_top,
        "compile": case.compile,
        "batch": batch,
        "seq_len": mcfg.seq_len,
        "first_step_s": round(first_s, 2),
        "step_ms": round(seconds * 1e3, 2),
        "tokens_per_s": round(tokens_s),
        "flops_per_token": per_token,
        "tflops": round(per_token * tokens_s / 1e12, 2),
        "mfu": round(per_token * tokens_s / (peak * 1e12), 4) if peak else None,
        "peak_memory_gib": round(peak_mem / 2**30, 2) if peak_mem is not None else None,
        "plan_memory_gib": round(estimate / 2**30, 2),
        "plan_memory_ratio": round(estimate / peak_mem, 3) if peak_mem else None,
    }


def table(rows: list[dict[str, Any]]) -> None:
    cols = ["case", "step_ms", "tokens_per_s", "tflops", "mfu", "first_step_s"]
    cols += ["peak_memory_gib", "plan_memory_gib"]
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    for row in [cols, ["-" * w for w in widths], *cells]:
        print(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 blocks only, 5 timed steps")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (16)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per case (20)")
    parser.add_argument("--budget-s", type=float, default=200.0, help="stop starting cases")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON path ({RESULTS})")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak, if not known")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shape on CPU (a check)")
    args = parser.parse_args()
    start = time.perf_counter()

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("no CUDA device: bench_gpu.py measures GPU training; nothing was measured")
        return 0
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    name = (platform.processor() or "cpu") if args.cpu_smoke else torch.cuda.get_device_name()
    peak = args.peak_tflops or (None if args.cpu_smoke else peak_tflops(name))
    cfg = shape(args.cpu_smoke)
    cases = SMOKE if args.cpu_smoke else QUICK if args.quick else FULL
    steps = 3 if args.cpu_smoke else 5 if args.quick else args.steps
    batch = 2 if args.cpu_smoke else args.batch
    print(f"{name}; torch {torch.__version__}, CUDA {torch.version.cuda}; peak {peak} TFLOP/s")

    report: dict[str, Any] = {
        "device": name,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "peak_tflops": peak,
        "preset": "tiny smoke shape" if args.cpu_smoke else "small",
    }
    if not args.cpu_smoke:
        try:
            report["flash"] = flash_check(cfg, device)
        except Exception as exc:  # reported, not fatal: the timings still count
            report["flash"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        print(f"flash attention: {json.dumps(report['flash'])}")
    runs, skipped = [], []
    for case in cases:
        left = args.budget_s - (time.perf_counter() - start)
        if left < (COMPILE_BUDGET_S if case.compile else 10.0):
            skipped.append(case.label)
            continue
        try:
            runs.append(run_case(case, cfg, device, batch, steps, peak))
        except Exception as exc:  # out of memory, a compiler missing: record it, go on
            first = (str(exc).splitlines() or [""])[0][:200]
            skipped.append(f"{case.label}: failed, {type(exc).__name__}: {first}")
        if case.compile:
            torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the case's model and optimizer went with run_case
        print(f"  {case.label}: done at {time.perf_counter() - start:.0f} s", flush=True)
    report["runs"], report["skipped"] = runs, skipped

    full = [r for r in runs if r["trainable_top"] is None and r["mfu"] is not None]
    best = max(full, key=lambda r: (r["blocks"], r["mfu"]), default=None)  # deepest, then best
    if best is not None:
        report["mfu"] = best["mfu"]
        report["tokens_per_s"] = best["tokens_per_s"]
        report["mfu_run"] = f"{report['preset']} preset, {best['case']}, batch {batch}"
    eager = [r for r in full if not r["compile"] and r["blocks"] == (best or {}).get("blocks")]
    if eager:
        report["mfu_eager"] = eager[0]["mfu"]
    report["total_s"] = round(time.perf_counter() - start, 1)

    print()
    table(runs)
    for s in skipped:
        print(f"skipped: {s}")
    out = args.out or (None if args.cpu_smoke else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out} (mfu {report.get('mfu')}) in {report['total_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
