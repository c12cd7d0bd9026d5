"""The arms of `dte ablate` and the arithmetic that makes them comparable.

An arm is a small spec: grow or not, how to freeze and to grow, and three switches of the
identity-embedded method (Word2Vec embeddings, the co-occurrence prior, the identity losses).
A switch left ``None`` takes the workspace's setting, so every arm differs from the baseline
(the configured method at full depth from scratch) in the one thing its name says.

Compute is counted with :mod:`dte_aar.flops` (frozen forward passes included). The budget B is
the baseline's: ``steps`` steps at full depth. A progressive arm spends ``cycle_steps`` steps at
each depth while it grows (the same tokens per depth for every arm), then trains end to end at
full depth until one more step would pass B; a non-progressive arm just trains at full depth.
Every arm therefore ends within one step's cost below B, and a cheaper step (shallow, frozen,
no prior columns) buys more tokens. Training is cut into segments of ``cycle_steps`` steps, the
unit the real trainer calls a cycle: each segment starts with a fresh identity anchor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from dte_aar.flops import StepShape, flops_per_token
from dte_aar.model import ModelConfig
from dte_aar.schedule import trainable_top_blocks

if TYPE_CHECKING:
    from dte_aar.config import TrainSettings

Freeze = Literal["greedy", "none"]
Growth = Literal["identity", "copy", "random"]


class Arm(BaseModel):
    """One arm. ``None`` fields take the workspace's ``[train]`` setting (see :meth:`resolve`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    summary: str
    progressive: bool = False  # grow from one layer to the target depth, or start there
    freeze: Freeze = "none"
    growth: Growth | None = None
    embedding_init: Literal["word2vec", "random"] | None = None
    cooc: bool | None = None  # the co-occurrence attention prior (train.cooc_rank > 0)
    identity_losses: bool | None = None  # self-reference CE weights + the stage's identity terms

    def resolve(self, train: TrainSettings) -> Arm:
        """This arm with every ``None`` filled in from ``train``."""
        return self.model_copy(
            update={
                "growth": self.growth or train.growth,
                "embedding_init": self.embedding_init or train.embedding_init,
                "cooc": train.cooc_rank > 0 if self.cooc is None else self.cooc,
                "identity_losses": True if self.identity_losses is None else self.identity_losses,
            }
        )

    def method(self) -> tuple:
        """What the arm does, names aside: two arms with the same method train the same."""
        growth = (self.freeze, self.growth) if self.progressive else ()
        return (self.progressive, *growth, self.embedding_init, self.cooc, self.identity_losses)

    def describe(self) -> str:
        """A resolved arm in a few words, for the table."""
        how = f"grow, {self.freeze}, {self.growth} init" if self.progressive else "full depth"
        extras = [
            "w2v" if self.embedding_init == "word2vec" else "rand emb",
            "cooc" if self.cooc else "no cooc",
            "id loss" if self.identity_losses else "no id loss",
        ]
        return f"{how}; {', '.join(extras)}"


ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm(name="baseline", summary="full depth from scratch, the configured method"),
        Arm(name="greedy", summary="the seed's schedule", progressive=True, freeze="greedy"),
        Arm(
            name="none-identity",
            summary="grow, all blocks train, function-preserving init",
            progressive=True,
            growth="identity",
        ),
        Arm(
            name="none-copy",
            summary="grow, all blocks train, copy the top block (stacking)",
            progressive=True,
            growth="copy",
        ),
        Arm(name="random-emb", summary="baseline, random embeddings", embedding_init="random"),
        Arm(name="no-cooc", summary="baseline without the co-occurrence prior", cooc=False),
        Arm(name="no-id-loss", summary="baseline, plain cross-entropy", identity_losses=False),
    )
}
BASELINE = "baseline"
DEFAULT_ARMS = ("baseline", "greedy", "none-identity", "none-copy")


def parse_arms(spec: str | None) -> list[Arm]:
    """Arms named in a comma list (``all``: every one; empty: the defaults), baseline first
    and always included: every ratio is measured against it."""
    if spec is None or not spec.strip():
        names = list(DEFAULT_ARMS)
    elif spec.strip() == "all":
        names = list(ARMS)
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm {unknown[0]!r}; known arms: {', '.join(ARMS)}")
    ordered = [BASELINE, *(n for n in dict.fromkeys(names) if n != BASELINE)]
    return [ARMS[n] for n in ordered]


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Segment:
    """Steps at one shape: ``grow`` blocks are added first, then ``steps`` steps run with the
    top ``trainable_top`` blocks training (None: all, embeddings included)."""

    layers: int
    trainable_top: int | None
    steps: int
    grow: int
    step_flops: int

    @property
    def flops(self) -> int:
        return self.steps * self.step_flops


def step_flops(cfg: ModelConfig, shape: StepShape, batch_tokens: int) -> int:
    return flops_per_token(cfg, shape) * batch_tokens


def budget(cfg: ModelConfig, steps: int, batch_tokens: int) -> int:
    """B: ``steps`` steps at the target depth with everything training."""
    return steps * step_flops(cfg, StepShape(cfg.target_layers), batch_tokens)


def plan(
    arm: Arm,
    cfg: ModelConfig,
    total: int,
    batch_tokens: int,
    cycle_steps: int,
    per_cycle: int = 1,
) -> list[Segment]:
    """The segments of a resolved ``arm`` on the shape ``cfg`` (its ``target_layers`` is the
    final depth) whose FLOPs add up to at most ``total``, within one step of it."""
    if cycle_steps < 1 or per_cycle < 1:
        raise ValueError("cycle_steps and per_cycle must be >= 1")
    target = cfg.target_layers
    segments: list[Segment] = []
    spent = 0

    def add(layers: int, top: int | None, steps: int, grow: int) -> bool:
        """Append up to ``steps`` steps; False once the budget is spent."""
        nonlocal spent
        cost = step_flops(cfg, StepShape(layers, top), batch_tokens)
        n = min(steps, (total - spent) // cost)
        if n > 0:
            segments.append(Segment(layers, top, n, grow, cost))
            spent += n * cost
        return n == steps

    depth = min(per_cycle, target) if arm.progressive else target
    room = add(depth, trainable_top_blocks(arm.freeze, depth, True, 0), cycle_steps, 0)
    while room and depth < target:
        grow = min(per_cycle, target - depth)
        depth += grow
        room = add(depth, trainable_top_blocks(arm.freeze, depth, False, grow), cycle_steps, grow)
    # End to end at full depth (the greedy schedule's refinement: grew 0 trains everything).
    top = trainable_top_blocks(arm.freeze, target, False, 0)
    while room:
        room = add(target, top, cycle_steps, 0)
    return segments


def cumulative_flops(segments: list[Segment]) -> np.ndarray:
    """FLOPs spent after each step, step 0 (nothing yet) included."""
    costs = [s.step_flops for s in segments for _ in range(s.steps)]
    return np.concatenate(([0], np.cumsum(np.asarray(costs, dtype=np.float64))))


def eval_steps(segments: list[Segment], total: int, points: int) -> list[int]:
    """Steps after which to evaluate: 0, the first step past each ``total / points`` of the
    budget, and the last step."""
    cum = cumulative_flops(segments)
    last = len(cum) - 1
    marks = [int(np.searchsorted(cum, k * total / points)) for k in range(1, points)]
    return sorted({0, *(min(m, last) for m in marks), last})


# --------------------------------------------------------------------------- the headline
def flops_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """FLOPs at which the held-out ``curve`` of (flops, loss) points first reaches ``target``,
    interpolated linearly between evaluations; None if it never does."""
    for i, (flops, loss) in enumerate(curve):
        if loss <= target:
            if i == 0:
                return flops
            f0, l0 = curve[i - 1]
            return f0 + (l0 - target) / (l0 - loss) * (flops - f0)
    return None
