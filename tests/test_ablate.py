"""`dte ablate`: arms spend equal FLOPs, the headline ratio is read off the curves correctly,
and one real (micro) run writes its table, results and a real plot."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import pytest
from click.testing import CliRunner

from dte_aar.ablate import ablate_command
from dte_aar.ablate_arms import ARMS, budget, eval_steps, flops_to_reach, parse_arms, plan
from dte_aar.ablate_report import Ablation, ArmInfo, ArmRun, markdown, ratio_cell
from dte_aar.config import TrainSettings
from dte_aar.flops import StepShape, flops_per_token
from dte_aar.model import ModelConfig

SHAPE = ModelConfig(vocab_size=300, d_model=32, n_heads=2, d_ff=64, seq_len=32, target_layers=6)
MICRO_CONFIG = """\
seed = 7
[train]
batch_size = 4
seq_len = 32
vocab_size = 300
warmup_steps = 1
embedding_init = "random"
cooc_rank = 0
device = "cpu"
[generate]
max_new_tokens = 12
[plugins.progressive]
d_model = 32
n_heads = 2
d_ff = 64
target_layers = 3
"""


# --------------------------------------------------------------------------- the plan
@pytest.mark.parametrize("name", list(ARMS))
def test_every_arm_spends_the_budget_within_one_step(name: str) -> None:
    arm = ARMS[name].resolve(TrainSettings())
    total = budget(SHAPE, steps=40, batch_tokens=128)
    segments = plan(arm, SHAPE, total, batch_tokens=128, cycle_steps=5)
    spent = sum(s.flops for s in segments)
    assert spent <= total
    assert total - spent < max(s.step_flops for s in segments)
    # each segment's step cost is flops.py's count at its shape
    for s in segments:
        assert s.step_flops == flops_per_token(SHAPE, StepShape(s.layers, s.trainable_top)) * 128
    assert segments[-1].layers == SHAPE.target_layers


def test_schedules_follow_the_trainer() -> None:
    total = budget(SHAPE, steps=40, batch_tokens=128)
    greedy = plan(ARMS["greedy"].resolve(TrainSettings()), SHAPE, total, 128, 5)
    none = plan(ARMS["none-copy"].resolve(TrainSettings()), SHAPE, total, 128, 5)
    base = plan(ARMS["baseline"].resolve(TrainSettings()), SHAPE, total, 128, 5)
    # greedy: the first block trains with everything, then only each new block (the top 4 at
    # depth 4), then the full depth trains end to end
    assert [(s.layers, s.trainable_top) for s in greedy[:6]] == [
        (1, None), (2, 1), (3, 1), (4, 4), (5, 1), (6, 1)
    ]  # fmt: skip
    assert all(s.trainable_top is None and s.layers == 6 for s in greedy[6:])
    assert [s.layers for s in none[:6]] == [1, 2, 3, 4, 5, 6]
    assert all(s.trainable_top is None for s in none)
    assert [s.grow for s in none[:6]] == [0, 1, 1, 1, 1, 1]
    # the baseline is exactly its steps; cheaper shapes buy more steps for the same FLOPs
    assert sum(s.steps for s in base) == 40
    assert sum(s.steps for s in greedy) > sum(s.steps for s in none) > 40


def test_evaluations_are_evenly_spaced_in_flops() -> None:
    total = budget(SHAPE, steps=40, batch_tokens=128)
    segments = plan(ARMS["none-identity"].resolve(TrainSettings()), SHAPE, total, 128, 5)
    marks = eval_steps(segments, total, points=4)
    n_steps = sum(s.steps for s in segments)
    assert marks[0] == 0 and marks[-1] == n_steps
    assert len(marks) == 5
    assert marks == sorted(set(marks))


# --------------------------------------------------------------------------- the headline
def test_flops_to_reach_interpolates_or_is_not_reached() -> None:
    curve = [(0.0, 8.0), (10.0, 6.0), (20.0, 4.0)]
    assert flops_to_reach(curve, 5.0) == pytest.approx(15.0)
    assert flops_to_reach(curve, 6.0) == pytest.approx(10.0)
    assert flops_to_reach(curve, 9.0) == 0.0
    assert flops_to_reach(curve, 3.9) is None
    # a later rise does not undo reaching: the first crossing counts
    assert flops_to_reach([(0.0, 8.0), (10.0, 4.0), (20.0, 5.0)], 6.0) == pytest.approx(5.0)


def _run(arm: str, seed: int, curve: list[tuple[float, float]]) -> ArmRun:
    return ArmRun(
        arm=arm, seed=seed, steps=10, flops=curve[-1][0], curve=curve, final_loss=curve[-1][1],
        train_seconds=1.0, seconds=1.0, segments=[],
    )  # fmt: skip


def test_ratios_against_each_seeds_baseline() -> None:
    result = Ablation(
        preset="tiny",
        shape={"d_model": 32, "target_layers": 3},
        budget_flops=100.0,
        baseline_steps=10,
        batch_size=4,
        seq_len=32,
        cycle_steps=2,
        seeds=[1, 2],
        corpus={"train_tokens": 1000, "heldout_tokens": 100, "eval_tokens": 64},
        arms=[ArmInfo(name=n, summary="", method=n) for n in ("baseline", "fast", "slow")],
        runs=[
            _run("baseline", 1, [(0.0, 8.0), (50.0, 6.0), (100.0, 5.0)]),
            _run("baseline", 2, [(0.0, 8.0), (50.0, 6.0), (100.0, 4.0)]),
            _run("fast", 1, [(0.0, 8.0), (50.0, 5.0), (100.0, 4.0)]),  # reaches 5.0 at 50
            _run("fast", 2, [(0.0, 8.0), (50.0, 4.0), (100.0, 3.0)]),  # reaches 4.0 at 50
            _run("slow", 1, [(0.0, 8.0), (50.0, 7.0), (100.0, 5.5)]),
            _run("slow", 2, [(0.0, 8.0), (50.0, 6.0), (100.0, 4.0)]),  # reaches 4.0 at 100
        ],
    )
    result.score()
    assert [r.ratio for r in result.runs_of("baseline")] == [1.0, 1.0]
    assert [r.ratio for r in result.runs_of("fast")] == [0.5, 0.5]
    assert [r.ratio for r in result.runs_of("slow")] == [None, 1.0]
    assert ratio_cell(result.runs_of("fast")) == "0.50 ± 0.00×"
    assert ratio_cell(result.runs_of("slow")) == "1.00× (1/2 seeds)"
    assert ratio_cell(result.runs_of("slow")[:1]) == "not reached"
    table = markdown(result)
    assert "| fast | fast | 10 | 0.50 ± 0.00× | 3.500 ± 0.707 |" in table


# --------------------------------------------------------------------------- the command
def test_unknown_arm_is_one_line_listing_the_known_ones(tmp_path: Path) -> None:
    result = CliRunner().invoke(ablate_command, ["-w", str(tmp_path), "--arms", "greedy,bogus"])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "unknown arm 'bogus'" in lines[0]
    assert all(name in lines[0] for name in ARMS)
    with pytest.raises(ValueError):
        parse_arms("nope")
    assert [a.name for a in parse_arms("none-copy,greedy")] == ["baseline", "none-copy", "greedy"]


def test_micro_ablation_writes_table_results_and_curves(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "dte.toml").write_text(MICRO_CONFIG)
    extra = tmp_path / "notes.md"
    extra.write_text("\n\n".join(f"Paragraph {i} about roots, rivers and rain." for i in range(40)))
    out = tmp_path / "out"
    args = ["-w", str(ws), "--arms", "none-copy", "--steps", "6", "--evals", "3", "--samples", "2",
            "--eval-tokens", "256", "--import", str(extra), "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(ablate_command, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert data["corpus"]["imported_examples"] > 0
    B = data["budget_flops"]
    runs = {r["arm"]: r for r in data["runs"]}
    assert set(runs) == {"baseline", "none-copy"}
    assert runs["baseline"]["flops"] == B
    for run in runs.values():
        step_max = max(s["step_flops"] for s in run["segments"])
        assert B - step_max < run["flops"] <= B
        assert run["curve"][0][0] == 0 and run["curve"][-1][0] == run["flops"]
        assert run["final_loss"] == run["curve"][-1][1] < run["curve"][0][1]
        assert run["probe_ppl"] > 1 and 0 <= run["identity_pass"] <= 1
    assert [s["layers"] for s in runs["none-copy"]["segments"]][:3] == [1, 2, 3]
    assert runs["baseline"]["ratio"] is not None
    table = (out / "table.md").read_text()
    assert "| baseline |" in table and "| none-copy |" in table
    assert "not reached" in table or "×" in table.split("| none-copy |")[1].splitlines()[0]
    png = mpimg.imread(out / "loss_vs_flops.png")
    assert png.shape[0] > 300 and png.shape[1] > 500
    assert png[..., :3].std() > 0.05  # lines and text, not a blank canvas
