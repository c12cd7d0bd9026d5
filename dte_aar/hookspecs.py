"""The plugin contract: pluggy hookspecs and the small protocols plugins satisfy.

Hooks are registration-style, like ``llm``'s ``register_models(register)``: a plugin hands
over objects; the cycle decides when to call them. Everything a plugin sees of the running
loop arrives in a :class:`CycleContext`, so plugins never import the cycle or the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pluggy
from pydantic import BaseModel

if TYPE_CHECKING:
    import click

    from dte_aar.arena import Arena
    from dte_aar.config import Settings, StageSettings
    from dte_aar.progress import Progress
    from dte_aar.store import Store

PROJECT = "dte_aar"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Stopped(Exception):
    """Raised where work ends early because ``ctx.should_stop()`` said so (a daemon's SIGTERM
    or stop request). The phase is left resumable; nothing already written is lost."""


# --------------------------------------------------------------------------- values
@dataclass(frozen=True)
class GenerationRequest:
    """One slot to fill. ``slot`` is unique per (cycle, generator): resume skips filled slots."""

    slot: int
    prompt: str
    style_example: str | None  # a random seed example that rides along for style
    seed: int  # per-slot RNG seed, so a resumed cycle writes the same text


@dataclass(frozen=True)
class Candidate:
    """A text a generator wrote for one request."""

    slot: int
    text: str
    prompt: str
    model: str = ""
    tokens: int = 0
    cost: float = 0.0
    # Why generation ended: "stop" (end-of-text or a stop string) or "length" (cut at the
    # token budget), as the OpenAI API says it; None when the generator cannot tell.
    finish_reason: str | None = None


@dataclass(frozen=True)
class Sample:
    """A corpus row as curators see it."""

    id: int
    text: str
    source: str  # seed | import | generated
    generator: str | None
    prompt: str | None
    text_hash: str
    finish_reason: str | None = None  # the generator's, for generated samples


@dataclass(frozen=True)
class Verdict:
    sample_id: int
    keep: bool
    score: float
    reason: str


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint the store has verified and registered as good."""

    path: Path
    sha256: str
    layers: int
    cycle: int


@dataclass
class TrainResult:
    """What a trainer hands back: a checkpoint file written atomically, not yet registered."""

    path: Path
    layers: int
    params: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class CycleContext:
    """What the running cycle shares with plugins (one per cycle)."""

    run_id: int
    cycle: int
    settings: Settings
    workspace: Path
    arena: Arena
    store: Store
    checkpoint: CheckpointInfo | None  # last good checkpoint, None before the first
    progress: Progress
    log_metric: Callable[[str, float, int | None], None]
    plugin_config: Callable[[str], dict[str, Any]]
    stage: int = 1  # 1-based index into settings.stages, decided by the cycle
    grow: int = 1  # blocks the trainer adds this cycle (0: a stage gate holds the depth)
    # True once the run should end early: long loops ask it between units of work (a training
    # step, a candidate), save what they must and raise Stopped.
    should_stop: Callable[[], bool] = lambda: False

    @property
    def stage_settings(self) -> StageSettings:
        return self.settings.stages[self.stage - 1]

    @property
    def seed(self) -> int:
        return self.settings.seed * 1_000_003 + self.cycle


# --------------------------------------------------------------------------- protocols
@runtime_checkable
class Generator(Protocol):
    """Writes candidate texts. Yield as you go: each candidate is stored when it arrives."""

    name: str

    def generate(
        self, requests: list[GenerationRequest], ctx: CycleContext
    ) -> Iterable[Candidate]: ...


@runtime_checkable
class Curator(Protocol):
    """Judges samples. One verdict per sample, with a score and a reason a human can read."""

    name: str

    def curate(self, samples: list[Sample], ctx: CycleContext) -> Iterable[Verdict]: ...


@runtime_checkable
class Trainer(Protocol):
    """Grows and trains the model on the accepted corpus; writes a checkpoint atomically."""

    name: str

    def train(self, ctx: CycleContext) -> TrainResult: ...


@runtime_checkable
class Evaluator(Protocol):
    """Scores a trained checkpoint; returns metric name -> value."""

    name: str

    def evaluate(self, checkpoint: Path, ctx: CycleContext) -> dict[str, float]: ...


class PluginConfig(BaseModel):
    """Base for a plugin's own settings, read from ``[plugins.<name>]`` in dte.toml."""

    model_config = {"extra": "forbid"}


@dataclass(frozen=True)
class Event:
    """An observable moment: cycle/phase start and end, samples, checkpoints, errors."""

    kind: str
    run_id: int | None = None
    cycle: int | None = None
    phase: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- hookspecs
@hookspec
def register_generators(register: Callable[[Generator], None]) -> None:
    """Hand over generator objects: ``register(MyGenerator())``."""


@hookspec
def register_curators(register: Callable[[Curator], None]) -> None:
    """Hand over curator objects."""


@hookspec
def register_trainers(register: Callable[[Trainer], None]) -> None:
    """Hand over trainer objects."""


@hookspec
def register_evaluators(register: Callable[[Evaluator], None]) -> None:
    """Hand over evaluator objects."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add click commands to the ``dte`` CLI."""


@hookspec
def on_event(event: Event) -> None:
    """Observe an event. Exceptions are caught and reported; they never stop the cycle."""
