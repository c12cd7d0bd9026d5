"""Settings: one pydantic model, read from ``<workspace>/dte.toml`` and ``DTE_*`` variables.

Precedence, highest first: command-line overrides, environment (``DTE_TRAIN__LR=1e-3``; nested
fields use ``__``), ``dte.toml``, defaults. Any bad value becomes a :class:`ConfigError` whose
message is one line naming where the value came from, the field and the reason.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError
from pydantic_core import PydanticUndefined
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

CONFIG_FILE = "dte.toml"
ENV_PREFIX = "DTE_"


class ConfigError(Exception):
    """A configuration problem, already phrased as one line for the user."""


class _Section(BaseModel):
    model_config = {"extra": "forbid"}


class TrainSettings(_Section):
    """How the trainer grows and trains the model each cycle."""

    steps_per_cycle: int = Field(120, gt=0, description="optimizer steps per cycle")
    batch_size: int = Field(16, gt=0, description="sequences per optimizer step")
    seq_len: int | None = Field(None, gt=7, description="context length (preset's if unset)")
    lr: float = Field(3e-3, gt=0, lt=1, description="peak learning rate")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor as a fraction of lr")
    warmup_steps: int = Field(10, ge=0, description="linear warmup steps")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, gt=0, description="max global gradient norm")
    growth: Literal["identity", "copy", "random"] = Field(
        "identity", description="how a new block is initialised"
    )
    freeze: Literal["greedy", "none"] = Field("greedy", description="freezing schedule")
    vocab_size: int | None = Field(None, ge=300, description="BPE vocabulary (preset's if unset)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, mps")
    micro_batch_size: int | None = Field(
        None, gt=0, description="sequences per forward pass; batch_size/micro = accumulation"
    )
    compile: bool = Field(False, description="torch.compile the model (CUDA only)")
    activation_cache: bool = Field(
        False, description="compute the frozen prefix once per training phase and reuse it"
    )
    layers_per_cycle: Literal[1, 2] = Field(1, description="blocks grown per cycle")
    embedding_init: Literal["word2vec", "random"] = Field(
        "word2vec", description="token embedding init"
    )
    cooc_rank: int = Field(16, ge=0, description="rank of the co-occurrence prior (0: off)")
    cooc_window: int = Field(5, gt=0, description="co-occurrence window, tokens each side")
    self_reference_boost: float = Field(
        1.2, ge=1, description="CE weight and key-bias init for self-reference tokens"
    )
    identity_loss_weight: float = Field(0.1, ge=0, description="identity-consistency loss")
    persona_loss_weight: float = Field(0.05, ge=0, description="persona loss (stage 3+)")
    coherence_loss_weight: float = Field(
        0.05, ge=0, description="self-reference coherence loss (stage 4+)"
    )
    nan_rollback_after: int = Field(
        3, gt=0, description="consecutive non-finite losses before rolling back"
    )
    keep_checkpoints: int = Field(3, gt=0, description="last K checkpoints kept (plus the best)")


class StageSettings(_Section):
    """One stage of growth: a layer range, its loss terms, and the gate that ends it."""

    name: str = Field(description="shown in logs, status and the TUI")
    last_layer: int | None = Field(
        None, gt=0, description="stage ends at this depth (unset: open-ended refinement)"
    )
    max_cycles: int = Field(gt=0, description="cycle budget once the stage's depth is reached")
    milestone: str = Field(description="metric the gate reads, e.g. heldout_ppl")
    threshold: float = Field(description="gate passes when the metric is <= this (ppl) ...")
    higher_is_better: bool = Field(False, description="... or >= this when true")
    losses: list[Literal["identity", "persona", "coherence"]] = Field(
        default_factory=list, description="auxiliary loss terms active in this stage"
    )
    unfreeze_all: bool = Field(False, description="train every block (refinement)")
    corpus_target: int | None = Field(
        None, gt=0, description="accepted samples this stage aims for (shown by status)"
    )


def default_stages() -> list[StageSettings]:
    """The seed's five stages: primordial, semantic, persona, meta-cognitive, refinement."""
    s = StageSettings
    return [
        s(name="primordial", last_layer=1, max_cycles=2, milestone="phrase_completion",
          threshold=0.25, higher_is_better=True, losses=["identity"]),
        s(name="semantic", last_layer=8, max_cycles=3, milestone="concept_accuracy",
          threshold=0.5, higher_is_better=True, losses=["identity"]),
        s(name="persona", last_layer=16, max_cycles=3, milestone="persona_consistency",
          threshold=0.5, higher_is_better=True, losses=["identity", "persona"]),
        s(name="meta-cognitive", last_layer=24, max_cycles=3, milestone="self_knowledge_pass",
          threshold=1.0, higher_is_better=True, losses=["identity", "persona", "coherence"]),
        s(name="refinement", last_layer=None, max_cycles=5, milestone="heldout_ppl",
          threshold=0.0, losses=["identity", "persona", "coherence"], unfreeze_all=True),
    ]  # fmt: skip


class GenerateSettings(_Section):
    """How many candidates a cycle asks for and how the model samples them."""

    samples_per_cycle: int = Field(12, ge=0, description="requests per generator per cycle")
    max_new_tokens: int = Field(80, gt=0, description="tokens per sampled text")
    temperature: float = Field(0.9, gt=0, description="sampling temperature")
    top_k: int = Field(40, ge=0, description="top-k filter (0: off)")
    corpus_multiple: float | None = Field(
        None, gt=0, description="ask for this multiple of the accepted corpus instead"
    )
    max_samples_per_cycle: int = Field(
        10_000, gt=0, description="upper bound on requests per generator per cycle"
    )
    max_synthetic_share: float = Field(
        0.95, gt=0, le=1, description="cap on generated samples' share of the corpus"
    )


class DaemonSettings(_Section):
    """How `dte daemon` retries, listens and logs."""

    retry_initial_s: float = Field(5.0, gt=0, description="wait after a failed cycle")
    retry_max_s: float = Field(600.0, gt=0, description="cap on the doubling wait")
    poll_interval_s: float = Field(1.0, gt=0, description="how often control requests are read")
    log_max_bytes: int = Field(10_000_000, ge=1_000, description="rotate daemon.log at this size")
    log_backups: int = Field(5, ge=1, description="rotated logs kept")


class Settings(BaseSettings):
    """Everything a workspace can set. Unknown keys in dte.toml are errors, not silence."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    arena: str = Field(
        "deep_tree_echo", description="a built-in arena's name or a path to an arena directory"
    )
    preset: Literal["tiny", "small"] = Field("tiny", description="model size preset")
    cycles: int = Field(3, gt=0, description="cycles one `dte bootstrap` runs")
    seed: int = Field(1234, description="global seed; every cycle derives its own from it")
    heldout_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="share of the seed corpus training never sees"
    )
    self_record_from_stage: int | None = Field(
        4, ge=1, description="from this stage on, the agent's own training record joins the corpus"
    )
    generators: list[str] = Field(["checkpoint"], description="generators used each cycle")
    curators: list[str] = Field(["quality", "dedup"], description="curators; all must keep")
    trainer: str = Field("progressive", description="the trainer plugin")
    evaluators: list[str] = Field(
        ["heldout", "milestone", "phrases", "concepts", "persona", "selfknowledge"],
        description="evaluators run after training (the stage milestones among them)",
    )
    train: TrainSettings = Field(default_factory=TrainSettings)
    generate: GenerateSettings = Field(default_factory=GenerateSettings)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    stages: list[StageSettings] = Field(
        default_factory=default_stages, description="stages of growth, in order"
    )
    plugins: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-plugin tables: [plugins.<name>]"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))


_toml_data: ContextVar[dict[str, Any] | None] = ContextVar("_toml_data", default=None)


class _TomlSource(PydanticBaseSettingsSource):
    """Feeds the already-parsed dte.toml (parsed by us, so errors can name the line)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return (_toml_data.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_toml_data.get() or {})


def read_toml(path: Path) -> dict[str, Any]:
    """Parse dte.toml; a syntax error becomes one line with the file and position."""
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_settings(workspace: Path, **overrides: Any) -> Settings:
    """Build the settings for ``workspace``; raise :class:`ConfigError` on any bad value."""
    path = Path(workspace) / CONFIG_FILE
    data = read_toml(path)
    token = _toml_data.set(data)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, data, overrides)) from None
    finally:
        _toml_data.reset(token)


def _describe(exc: ValidationError, path: Path, data: dict[str, Any], overrides: dict) -> str:
    """One line: where the bad value came from, which field, why."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    field = ".".join(loc) or "(settings)"
    env_name = ENV_PREFIX + "__".join(loc).upper()
    if overrides.get(loc[0]) is not None:
        origin = "command line"
    elif env_name in os.environ or (ENV_PREFIX + loc[0].upper()) in os.environ:
        origin = env_name if env_name in os.environ else ENV_PREFIX + loc[0].upper()
    elif loc and loc[0] in data:
        origin = str(path)
    else:
        origin = "settings"
    reason = err["msg"]
    if err["type"] == "extra_forbidden":
        reason = "unknown setting"
    elif "input" in err and not isinstance(err["input"], dict | list):
        reason += f" (got {err['input']!r})"
    return f"{origin}: {field}: {reason}"


def settings_reference() -> list[tuple[str, str, str]]:
    """(field, default, description) rows for the README's config reference and `dte config`."""
    rows: list[tuple[str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            default = info.get_default(call_default_factory=True)
            if isinstance(default, list) and default and isinstance(default[0], BaseModel):
                names = ", ".join(getattr(item, "name", "?") for item in default)
                rows.append((prefix + name, f"[{names}]", info.description or ""))
                walk(type(default[0]), f"{prefix}{name}[].")
                continue
            shown = "(required)" if default is PydanticUndefined else repr(default)
            rows.append((prefix + name, shown, info.description or ""))

    walk(Settings, "")
    return rows


def config_reference_markdown() -> str:
    """The README's configuration table (kept current by a test; `dte config --reference`)."""
    rows = ["| setting | default | env | meaning |", "|---|---|---|---|"]
    for name, default, description in settings_reference():
        env = "" if "[]" in name else f"`{ENV_PREFIX + name.replace('.', '__').upper()}`"
        rows.append(f"| `{name}` | `{default}` | {env} | {description} |")
    rows.append(
        "| `plugins.NAME.*` | | | a table per plugin, validated by that plugin's own config model |"
    )
    return "\n".join(rows)
