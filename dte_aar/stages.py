"""Stages of growth and the gates between them.

Each stage owns a depth range (the layers up to ``last_layer``). While the model is below a
stage's last layer the cycle grows it; once it is there, the stage's milestone gates the move
on: the cycle holds the depth and keeps training until the milestone metric passes its
threshold or the stage's cycle budget (``max_cycles`` at that depth) is spent. Both outcomes
are logged. The last stage is open-ended (``last_layer = None``): refinement at full depth,
and when its gate passes or its budget runs out, growth is complete.

The decision reads only committed history (cycles and metrics in the store), so a resumed
run decides exactly as an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

from dte_aar.config import StageSettings


@dataclass(frozen=True)
class StageDecision:
    stage: int  # 1-based index into the stage list
    grow: int  # blocks to add this cycle
    finished: bool  # every stage is done: nothing left to grow or refine
    note: str  # why, for the event log and the user
    advanced: bool = False  # this decision moved to a new stage


@dataclass(frozen=True)
class History:
    """Committed cycles as (stage, layers) pairs, oldest first, and the last milestone value."""

    cycles: list[tuple[int, int]]
    milestone: float | None  # the previous cycle's value of the current stage's metric


def gate_passes(stage: StageSettings, value: float | None) -> bool:
    if value is None:
        return False
    return value >= stage.threshold if stage.higher_is_better else value <= stage.threshold


def decide(
    stages: list[StageSettings], layers: int, history: History, per_cycle: int
) -> StageDecision:
    """What the next cycle does: which stage it trains in and how many blocks it adds."""
    if layers == 0 or not history.cycles:
        return StageDecision(1, 1, False, "first block", advanced=True)
    index = history.cycles[-1][0]
    stage = stages[index - 1]
    if stage.last_layer is not None and layers < stage.last_layer:
        grow = min(per_cycle, stage.last_layer - layers)
        return StageDecision(index, grow, False, f"growing toward layer {stage.last_layer}")
    at_depth = sum(1 for s, n in history.cycles if s == index and n == layers)
    metric = f"{stage.milestone} {_fmt(history.milestone)}"
    sign = ">=" if stage.higher_is_better else "<="
    if gate_passes(stage, history.milestone):
        why = f"{stage.name}: milestone passed ({metric} {sign} {stage.threshold:g})"
    elif at_depth >= stage.max_cycles:
        why = f"{stage.name}: cycle budget spent ({at_depth} at {layers} layers; {metric})"
    else:
        why = f"{stage.name}: holding {layers} layers ({metric}, needs {sign} {stage.threshold:g})"
        return StageDecision(index, 0, False, why)
    if index == len(stages):
        return StageDecision(index, 0, True, f"{why}; all stages complete", advanced=False)
    nxt = stages[index]  # the next stage, 0-based index == current 1-based index
    grow = 0 if nxt.last_layer is None else min(per_cycle, max(0, nxt.last_layer - layers))
    return StageDecision(index + 1, grow, False, f"{why}; entering {nxt.name}", advanced=True)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
