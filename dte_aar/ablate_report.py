"""What `dte ablate` writes: results.json, a Markdown table, a rich table and the loss curves.

Results are pydantic models, so results.json is their plain dump and reads back with
``Ablation.model_validate_json``. Over several seeds a cell is ``mean ± sample std``; the FLOPs
ratio of a seed is measured against that seed's own baseline, and a ratio some seeds never
reached says how many did (a mean over the others would flatter the arm). The baseline's own
ratio is read by the same rule: 1.00 unless its curve dipped below its final value earlier.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from dte_aar.ablate_arms import BASELINE, flops_to_reach
from dte_aar.atomic import atomic_write_text

COLUMNS = (
    "arm",
    "method",
    "steps",
    "FLOPs to baseline loss (× B)",
    "held-out loss",
    "probe ppl",
    "sample identity (pass)",
    "train time",
)


class ArmRun(BaseModel):
    """One arm trained with one seed."""

    arm: str
    seed: int
    steps: int
    flops: float  # training FLOPs spent, frozen forward passes included
    curve: list[tuple[float, float]]  # (FLOPs, held-out loss) at each evaluation
    final_loss: float
    flops_to_target: float | None = None  # FLOPs to reach this seed's baseline final loss
    ratio: float | None = None  # flops_to_target / budget; None: not reached
    probe_ppl: float | None = None
    probe_match: float | None = None  # the milestone evaluator's identity_score on the probes
    identity_mean: float | None = None  # mean identity score of sampled replies
    identity_pass: float | None = None  # share of sampled replies at or above the threshold
    train_seconds: float
    seconds: float  # training, evaluations and metrics together
    segments: list[dict[str, Any]]


class ArmInfo(BaseModel):
    name: str
    summary: str
    method: str


class Ablation(BaseModel):
    preset: str
    shape: dict[str, int]
    budget_flops: float
    baseline_steps: int
    batch_size: int
    seq_len: int
    cycle_steps: int
    seeds: list[int]
    corpus: dict[str, Any]
    arms: list[ArmInfo]
    runs: list[ArmRun] = []
    notes: list[str] = []
    wall_seconds: float = 0.0

    def score(self) -> None:
        """Fill each run's FLOPs to reach, and its ratio to, its seed's baseline final loss."""
        finals = {r.seed: r.final_loss for r in self.runs if r.arm == BASELINE}
        for run in self.runs:
            if run.seed in finals:
                run.flops_to_target = flops_to_reach(run.curve, finals[run.seed])
                reached = run.flops_to_target is not None
                run.ratio = run.flops_to_target / self.budget_flops if reached else None

    def runs_of(self, arm: str) -> list[ArmRun]:
        return [r for r in self.runs if r.arm == arm]


# --------------------------------------------------------------------------- cells
def _spread(values: list[float], digits: int) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def ratio_cell(runs: list[ArmRun]) -> str:
    reached = [r.ratio for r in runs if r.ratio is not None]
    if not reached:
        return "not reached"
    cell = f"{_spread(reached, 2)}×"
    return cell if len(reached) == len(runs) else f"{cell} ({len(reached)}/{len(runs)} seeds)"


def _present(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def rows(result: Ablation) -> list[list[str]]:
    out = []
    for info in result.arms:
        runs = result.runs_of(info.name)
        if not runs:
            continue
        identity = _spread(_present([r.identity_mean for r in runs]), 2)
        passed = _present([r.identity_pass for r in runs])
        if passed:
            identity += f" ({statistics.fmean(passed):.0%})"
        out.append(
            [
                info.name,
                info.method,
                str(round(statistics.fmean(r.steps for r in runs))),
                ratio_cell(runs),
                _spread([r.final_loss for r in runs], 3),
                _spread(_present([r.probe_ppl for r in runs]), 1),
                identity,
                f"{statistics.fmean(r.train_seconds for r in runs):.0f} s",
            ]
        )
    return out


def caption(result: Ablation) -> str:
    s = result.shape
    c = result.corpus
    return (
        f"preset {result.preset} (d {s['d_model']}, {s['target_layers']} layers), "
        f"budget B = {result.budget_flops:.3g} training FLOPs per arm "
        f"({result.baseline_steps} baseline steps of {result.batch_size}×{result.seq_len} "
        f"tokens), {len(result.seeds)} seed(s); corpus {c['train_tokens']:,} train / "
        f"{c['heldout_tokens']:,} held-out tokens, loss on {c['eval_tokens']:,} of them"
    )


def markdown(result: Ablation) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
        *("| " + " | ".join(row) + " |" for row in rows(result)),
    ]
    return "\n".join([*lines, "", caption(result), *result.notes]) + "\n"


def rich_table(result: Ablation) -> Any:
    """The table without the method column (too wide for a terminal; the caption lists it)."""
    from rich.table import Table

    methods = "; ".join(f"{a.name}: {a.method}" for a in result.arms)
    table = Table(title="dte ablate", caption=f"{caption(result)}\n{methods}")
    for name in (COLUMNS[0], *COLUMNS[2:]):
        table.add_column(name, justify="left" if name == "arm" else "right")
    for row in rows(result):
        table.add_row(row[0], *row[2:])
    return table


# --------------------------------------------------------------------------- curves
def plot(result: Ablation, path: Path) -> None:
    """Held-out loss against training FLOPs, one line per arm (the mean over seeds, min-max
    shaded), and the baseline's final loss as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    tops = []
    for info in result.arms:
        runs = result.runs_of(info.name)
        if not runs:
            continue
        n = min(len(r.curve) for r in runs)  # seeds share the plan, hence the eval points
        flops = np.array([p[0] for p in runs[0].curve[:n]])
        losses = np.array([[p[1] for p in r.curve[:n]] for r in runs])
        mean = losses.mean(axis=0)
        (line,) = ax.plot(flops, mean, marker=".", label=info.name)
        if len(runs) > 1:
            ax.fill_between(flops, losses.min(0), losses.max(0), color=line.get_color(), alpha=0.2)
        late = mean[flops >= 0.1 * result.budget_flops]
        tops.append(float(late.max()) if len(late) else float(mean.max()))
    finals = [r.final_loss for r in result.runs_of(BASELINE)]
    if finals:
        target = statistics.fmean(finals)
        ax.axhline(target, color="black", linestyle="--", linewidth=1, label="baseline final")
        low = min(min(p[1] for p in r.curve) for r in result.runs)
        if tops:  # the first evaluations (near ln V) would squash the rest of the plot
            ax.set_ylim(low - 0.05 * (max(tops) - low + 1e-9), max(tops) + 0.1)
    ax.set_xlabel("training FLOPs (frozen forward passes included)")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(f"dte ablate: {result.preset}, {len(result.seeds)} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write(result: Ablation, out: Path) -> dict[str, Path]:
    """results.json, table.md and loss_vs_flops.png under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "results": out / "results.json",
        "table": out / "table.md",
        "curves": out / "loss_vs_flops.png",
    }
    atomic_write_text(paths["results"], result.model_dump_json(indent=2))
    atomic_write_text(paths["table"], markdown(result))
    plot(result, paths["curves"])
    return paths
