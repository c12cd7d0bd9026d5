"""`dte plan` against a hand calculation for the seed's `small` preset, and its inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_workspace import tiny_workspace

from dte_aar import plan
from dte_aar.plan import parse_size, recorded_mfu, run_cycles, stages_for_depth
from dte_aar.plan_cli import plan_command

ROOT = Path(__file__).resolve().parents[1]

# The `small` preset as the trainer builds it: the co-occurrence prior (rank 16) and the key
# bias on, i.e. 16 + 1 extra q/k columns per head, rounded up to 24 for the fused kernels.
H, F, V, T, A, E = 768, 3072, 50257, 1024, 12, 24
GiB = 2**30


def plan_json(*args: str) -> dict:
    result = CliRunner().invoke(plan_command, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture(autouse=True)
def _no_recorded_mfu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A bench result committed to the repository must not change these numbers."""
    monkeypatch.setattr(plan, "GPU_RESULTS", tmp_path / "absent.json")


def test_sizes():
    assert parse_size("50M") == 50_000_000
    assert parse_size("2G") == parse_size("2GB") == parse_size("2e9") == 2_000_000_000
    assert parse_size("1.5GiB") == 1.5 * 2**30
    assert parse_size("300k") == parse_size("300,000") == 300_000
    for bad in ("12Q", "G", "", "2 Gi B", "-5M", "1iB"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_small_preset_by_hand():
    # parameters of one block: two norms, qkv, attention projection, fc, mlp projection,
    # the co-occurrence strength and the per-token key bias
    block = 2 * 2 * H + (H * 3 * H + 3 * H) + (H * H + H) + (H * F + F) + (F * H + H) + 1 + V
    assert block == 7_138_130
    params = 24 * block + 2 * H + H * V + V * H + T * H  # + final norm, head, token, position
    assert params == 249_297_840

    # FLOPs per token: matmul weights 2x forward, attention q.k and att.v 2*T*width each,
    # training 3x forward, the head 6*H*V
    weights = 3 * H * H + H * H + 2 * H * F  # 7,077,888
    fwd = 2 * weights + 2 * 2 * T * (H + A * E)  # 14,155,776 + 4,325,376
    train = 3 * fwd
    head = 6 * H * V
    assert (fwd, train, head) == (18_481_152, 55_443_456, 231_584_256)
    full = 24 * train + head
    assert full == 1_562_227_200  # 6N-style plus attention, all 24 layers trainable

    def cost(layers: int, top: int | None) -> int:  # frozen blocks forward only
        k = layers if top is None else top
        return k * train + (layers - k) * fwd + head

    # The greedy run with every stage spending its cycle budget (2, 3, 3, 3, 5 cycles at its
    # depth): each cycle grows one block and trains it alone, except at multiples of 4 (the
    # top 4) and in the first cycle, the holding cycles and refinement (everything).
    def grow(a: int, b: int) -> list[tuple[int, int | None]]:
        return [(n, 4 if n % 4 == 0 else 1) for n in range(a, b + 1)]

    cycles = [(1, None)] * 2 + grow(2, 8) + [(8, None)] * 2 + grow(9, 16) + [(16, None)] * 2
    cycles += grow(17, 24) + [(24, None)] * 2 + [(24, None)] * 5
    assert len(cycles) == 36
    greedy_per_token = sum(cost(n, top) for n, top in cycles)
    none_per_token = sum(cost(n, None) for n, _ in cycles)
    assert (greedy_per_token, none_per_token) == (27_465_025_536, 37_001_299_968)

    D = 3_600_000_000  # tokens trained; 100M per progressive cycle
    got = plan_json("--preset", "small", "--corpus-tokens", "3.6G", "--mfu", "0.4")
    assert got["params"] == params
    by = {s["schedule"]: s for s in got["schedules"]}
    assert by["full"]["cycles"][0]["flops_per_token"] == full
    assert by["full"]["flops"] == full * D
    assert by["greedy"]["flops"] == greedy_per_token * D / 36
    assert by["none"]["flops"] == none_per_token * D / 36
    assert [(c["layers"], c["trainable_top"]) for c in by["greedy"]["cycles"]] == cycles
    assert by["greedy"]["ratio_to_full"] == pytest.approx(greedy_per_token / 36 / full)
    assert by["greedy"]["steps_per_cycle"] == pytest.approx(100e6 / (16 * T))

    # Hours on one A100 at MFU 0.4: FLOPs / (312e12 * 0.4) / 3600, and the cost at $1.39/h
    est = {(e["gpu"], e["schedule"]): e for e in got["estimates"]}
    a100 = est[("A100", "full")]
    assert a100["hours"] == pytest.approx(full * D / (312e12 * 0.4) / 3600)
    assert a100["hours"] == pytest.approx(12.518, abs=1e-3)
    assert a100["cost"] == pytest.approx(a100["hours"] * 1.39)
    assert est[("A100", "greedy")]["hours"] == pytest.approx(6.113, abs=1e-3)

    # Memory at micro-batch 16 (the default batch on one GPU), everything trainable:
    # 18 bytes per parameter + per token 24 blocks x (20H + 8AE + 4F + 4A) + head (10H + 14V)
    static = 18 * params
    per_token = 24 * (20 * H + 8 * A * E + 4 * F + 4 * A) + 10 * H + 14 * V
    assert per_token == 24 * 30_000 + 711_278
    peak = by["greedy"]["peak_memory"]
    assert peak["total"] == static + 16 * T * per_token  # ~26 GiB: refinement trains all
    assert est[("A100", "full")]["fits"] and not est[("RTX4090", "full")]["fits"]
    # RTX 4090: (0.9 * 24 GiB - static) // (1024 tokens * per_token) sequences
    assert est[("RTX4090", "full")]["max_micro_batch"] == int(
        (0.9 * 24 * GiB - static) // (T * per_token)
    )
    assert est[("RTX4090", "full")]["max_micro_batch"] == 12

    # The seed's "124M model, 1,200 A100-hours" against GPT-2 small's shape (12 layers, tied
    # head, no priors): 124,439,808 parameters, 6 * 85M + attention + head FLOPs per token
    seed = got["seed"]
    gpt2_per_token = 12 * 3 * (2 * weights + 4 * T * H) + head
    assert seed["gpt2_params"] == 124_439_808
    assert seed["gpt2_flops_per_token"] == gpt2_per_token
    hours = gpt2_per_token * D / (312e12 * 0.4) / 3600
    assert seed["a100_hours_this_corpus"] == pytest.approx(hours)
    assert seed["ratio_this_corpus"] == pytest.approx(1200 / hours)
    assert seed["tokens_the_claim_buys"] == pytest.approx(
        1200 * 3600 * 312e12 * 0.4 / gpt2_per_token
    )


def test_stage_gates_and_depth():
    stages = plan.default_stages()
    budget, passing = run_cycles(stages, 1, "budget"), run_cycles(stages, 1, "pass")
    assert (len(budget), len(passing)) == (36, 25)  # 24 growth cycles (+ 11 holds) + refinement
    assert [n for _, n, _, _ in passing] == [*range(1, 25), 24]
    two = run_cycles(stages, 2, "pass")  # two layers per cycle after the first
    assert [n for _, n, _, _ in two][:5] == [1, 3, 5, 7, 8]
    half = stages_for_depth(stages, 12)
    assert [s.last_layer for s in half] == [1, 4, 8, 12, None]
    got = plan_json("--corpus-tokens", "1G", "--layers", "12", "--schedule", "greedy")
    assert got["model"]["layers"] == 12
    assert max(c["layers"] for c in got["schedules"][0]["cycles"]) == 12


def test_measured_mfu_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assumed = plan_json("--corpus-tokens", "1G", "--gpu", "H100")
    assert assumed["mfu"]["value"] == plan.DEFAULT_MFU
    assert "assumed" in assumed["mfu"]["source"]
    results = tmp_path / "gpu.json"
    results.write_text(json.dumps({"mfu": 0.25, "device": "NVIDIA H200", "date": "2026-01-02"}))
    monkeypatch.setattr(plan, "GPU_RESULTS", results)
    measured = plan_json("--corpus-tokens", "1G", "--gpu", "H100", "--price-per-hour", "10")
    assert measured["mfu"]["value"] == 0.25
    assert "NVIDIA H200" in measured["mfu"]["source"]
    assert "2026-01-02" in measured["mfu"]["source"]
    a, m = assumed["estimates"][0], measured["estimates"][0]
    assert m["hours"] == pytest.approx(a["hours"] * plan.DEFAULT_MFU / 0.25)
    assert m["cost"] == pytest.approx(m["hours"] * 10)
    assert plan_json("--corpus-tokens", "1G", "--mfu", "0.5")["mfu"]["source"] == "--mfu"
    results.write_text("{not json")
    assert recorded_mfu(results) is None


def test_cli_table_and_errors():
    runner = CliRunner()
    result = runner.invoke(plan_command, ["--corpus-bytes", "2G", "--gpu", "a100", "--mfu", "0.4"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "249,297,840 parameters" in out
    assert "500.0M tokens" in out  # 2 GB at the assumed 4 bytes/token
    assert "1,200" in out and "RTX4090" not in out
    for name in ("full", "greedy", "none"):
        assert name in out

    bad = runner.invoke(plan_command, ["--corpus-bytes", "12Q"])
    assert bad.exit_code == 2
    assert "12Q" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    both = runner.invoke(plan_command, ["--corpus-bytes", "1G", "--corpus-tokens", "1G"])
    assert both.exit_code == 2 and "not both" in both.stderr
    none = runner.invoke(plan_command, [])
    assert none.exit_code == 2 and "--corpus-bytes" in none.stderr
    heads = runner.invoke(plan_command, ["--corpus-tokens", "1G", "--n-heads", "5"])
    assert heads.exit_code == 2 and "not divisible" in heads.stderr


def test_workspace_measures_bytes_per_token(tmp_path: Path):
    from dte_aar.agent import tokenizer_file
    from dte_aar.store import Store
    from dte_aar.tokenizer import load_tokenizer

    ws = tiny_workspace(tmp_path / "ws")
    tok = load_tokenizer(tokenizer_file(ws))
    with Store.open(ws, readonly=True) as store:
        texts = [text for _, text in store.corpus("train")]
    n_bytes = sum(len(t.encode()) for t in texts)
    n_tokens = sum(len(tok.encode(t).ids) + 1 for t in texts)  # + end-of-text per sample

    got = plan_json("--workspace", str(ws))  # no size: the workspace's own corpus
    corpus = got["corpus"]
    assert corpus["bytes_per_token"] == pytest.approx(n_bytes / n_tokens)
    assert "measured" in corpus["bytes_per_token_source"]
    assert corpus["bytes"] == n_bytes and corpus["tokens"] == round(n_tokens * 1.0)
    # the workspace's settings: its tokenizer's vocabulary, seq_len, and the shape overrides
    assert got["model"]["vocab_size"] == tok.get_vocab_size() == 300
    assert (got["model"]["d_model"], got["model"]["seq_len"], got["model"]["cooc_rank"]) == (
        32,
        64,
        0,
    )
    assert got["batch_size"] == 4
    sized = plan_json("--workspace", str(ws), "--corpus-bytes", "1M")
    assert sized["corpus"]["tokens"] == round(1_000_000 / (n_bytes / n_tokens))


def _bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_gpu_bench_without_cuda_and_its_results(tmp_path: Path):
    out = tmp_path / "gpu.json"
    none = _bench("--out", str(out), env={"CUDA_VISIBLE_DEVICES": ""})
    assert none.returncode == 0, none.stderr
    assert "no CUDA device" in none.stdout and not out.exists()

    smoke = _bench("--cpu-smoke", "--peak-tflops", "0.05", "--out", str(out))
    assert smoke.returncode == 0, smoke.stderr
    report = json.loads(out.read_text())
    assert [r["trainable_top"] for r in report["runs"]] == [None, 1]
    run = report["runs"][0]
    assert run["tokens_per_s"] > 0
    assert run["mfu"] == pytest.approx(
        run["flops_per_token"] * run["tokens_per_s"] / 0.05e12, rel=0.01
    )
    mfu = recorded_mfu(out)
    assert mfu is not None and mfu.value == report["mfu"] == run["mfu"]


def test_many_gpus_ddp_and_fsdp():
    small = plan_json("--preset", "small", "--corpus-tokens", "1G", "--gpus", "8")
    mem = small["schedules"][0]["peak_memory"]
    params = small["params"]
    assert mem["micro_batch"] == 2  # batch 16 over 8 GPUs
    assert mem["gradients"] == 8 * params  # fp32 gradients + DDP's buckets
    assert not mem["sharded"]  # the trainer replicates small (DDP)
    # FSDP shards weights, gradients and AdamW states 8 ways, plus two gathered fp32 blocks
    block = plan.block_params(plan.model_config(plan._shape_fields(small["model"])))
    assert mem["fsdp_total"] == 16 * params / 8 + 8 * block + mem["activations"]
    large = plan_json("--preset", "large", "--corpus-tokens", "1G", "--gpus", "8")
    lm = large["schedules"][0]["peak_memory"]
    assert lm["sharded"] and lm["fsdp_total"] < lm["total"]
    est = {(e["gpu"], e["schedule"]): e for e in large["estimates"]}
    # hours split over 8 GPUs; GPU-hours (and cost) do not change
    one = plan_json("--preset", "large", "--corpus-tokens", "1G")
    one_est = {(e["gpu"], e["schedule"]): e for e in one["estimates"]}
    assert est[("H100", "full")]["hours"] == pytest.approx(one_est[("H100", "full")]["hours"] / 8)
    assert est[("H100", "full")]["cost"] == pytest.approx(one_est[("H100", "full")]["cost"])
