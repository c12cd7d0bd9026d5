"""The `dte` command line (click), extended by plugins through ``register_commands``."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from dte_aar import plugins as plugin_loading
from dte_aar.arena import ArenaError, check_arena, load_arena, read_examples
from dte_aar.cli_options import workspace_option as workspace_option_factory
from dte_aar.config import (
    CONFIG_FILE,
    ConfigError,
    Settings,
    config_reference_markdown,
    load_settings,
    settings_reference,
)
from dte_aar.plugins import PluginError, PluginManager
from dte_aar.report import report_command
from dte_aar.store import Store, StoreError, text_hash
from dte_aar.tui import watch_command

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


class UserError(click.ClickException):
    """One line on stderr, exit code 2: bad config, bad input, missing pieces."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        err_console.print(f"[red]error:[/red] {self.message}", highlight=False, soft_wrap=True)


def _user_errors(fn: Callable) -> Callable:
    """Turn the project's expected failures into one clean line and exit code 2."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, ArenaError, PluginError, StoreError) as exc:
            raise UserError(str(exc)) from None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


workspace_option = workspace_option_factory()


def manager() -> PluginManager:
    """The plugin manager, loaded on first use: `dte watch` and `dte report` never pay for it."""
    root = click.get_current_context().find_root()
    root.ensure_object(dict)
    if "manager" not in root.obj:
        pm = build_manager(root.params.get("plugins_dir"))
        root.obj["manager"] = pm
        pm.call_each("register_commands", cli=root.command)
    return root.obj["manager"]


# Commands whose modules import torch or a web stack: imported only when invoked.
LAZY_COMMANDS = {
    "serve": "dte_aar.serve:serve_command",
    "finetune": "dte_aar.finetune:finetune_command",
    "daemon": "dte_aar.daemon_cli:daemon",
    "plan": "dte_aar.plan_cli:plan_command",
    "eval": "dte_aar.evaluate:eval_command",
    "ablate": "dte_aar.ablate:ablate_command",
}


class DteGroup(click.Group):
    """Resolves plugin-added commands by loading plugins only when a name is not built in."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS and cmd_name not in self.commands:
            module, _, attr = LAZY_COMMANDS[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        command = super().get_command(ctx, cmd_name)
        if command is None and ctx.parent is None:
            with ctx.scope(cleanup=False):
                manager()
            command = super().get_command(ctx, cmd_name)
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        if ctx.parent is None:
            with ctx.scope(cleanup=False):
                manager()
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})


@click.group(cls=DteGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--plugins-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    envvar="DTE_PLUGINS_DIR",
    help="Also load every loose .py file in this directory as a plugin.",
)
@click.version_option(package_name="dte-aar")
def cli(plugins_dir: Path | None) -> None:
    """Grow a language model around one identity, one layer per bootstrap cycle."""


def build_manager(plugins_dir: Path | None) -> PluginManager:
    try:
        return plugin_loading.load(plugins_dir)
    except PluginError as exc:
        raise UserError(str(exc)) from None


# ---------------------------------------------------------------------- init
@cli.command()
@workspace_option
@_user_errors
def init(workspace: Path) -> None:
    """Create a workspace with a commented dte.toml and an empty database."""
    load_settings(workspace)  # an existing bad dte.toml is reported before anything is written
    workspace.mkdir(parents=True, exist_ok=True)
    config = workspace / CONFIG_FILE
    if not config.exists():
        config.write_text(config_template(), encoding="utf-8")
    Store.open(workspace).close()
    console.print(f"workspace ready: {workspace}  (edit {config}, then run `dte bootstrap`)")


def config_template() -> str:
    lines = ["# dte-aar workspace settings; every key is optional (defaults shown).", ""]
    section = ""
    for name, default, description in settings_reference():
        if "[]" in name:  # arrays of tables: documented in the README, not templated
            continue
        head, _, key = name.rpartition(".")
        if head != section:
            lines += ["", f"# [{head}]"]
            section = head
        lines.append(f"# {key} = {_toml_value(default)}  # {description}")
    return "\n".join(lines) + "\n"


def _toml_value(default_repr: str) -> str:
    return {"None": '"" (unset)', "True": "true", "False": "false"}.get(
        default_repr, default_repr.replace("'", '"')
    )


# ---------------------------------------------------------------------- bootstrap
@cli.command()
@workspace_option
@click.option("--cycles", "-n", type=int, help="Cycles to run now (default: settings.cycles).")
@click.option("--preset", type=click.Choice(["tiny", "small"]), help="Model size preset.")
@_user_errors
def bootstrap(workspace: Path, cycles: int | None, preset: str | None) -> None:
    """Run bootstrap cycles: generate, curate, grow and train, evaluate, checkpoint."""
    from dte_aar.cycle import Cycle, resolve_components
    from dte_aar.progress import RichProgress

    settings = load_settings(workspace, cycles=cycles, preset=preset)
    arena = load_arena(settings.arena)
    resolve_components(settings, manager())  # fail on a missing plugin before writing anything
    for issue in arena.issues:
        err_console.print(f"[yellow]warning:[/yellow] {issue}", highlight=False)
    workspace.mkdir(parents=True, exist_ok=True)
    with Store.open(workspace) as store:
        progress = RichProgress(console)
        try:
            runner = Cycle(settings, workspace, store, manager(), arena, progress, say=_say)
            with progress:
                outcomes = runner.run(settings.cycles)
        except KeyboardInterrupt:
            err_console.print("interrupted: run `dte bootstrap` again to resume where it stopped")
            sys.exit(130)
        print_summary(store, workspace, settings, outcomes)


def _say(message: str) -> None:
    err_console.print(message, highlight=False)


def print_summary(store: Store, workspace: Path, settings: Settings, outcomes: list) -> None:
    ppl = store.metric_by_cycle("heldout_ppl")
    table = Table(title="bootstrap summary")
    for column in ("cycle", "layers", "generated", "kept", "rejected", "held-out ppl", "time"):
        table.add_column(column, justify="right")
    for o in outcomes:
        table.add_row(
            str(o.n),
            str(o.layers),
            str(o.generated),
            str(o.accepted),
            str(o.rejected),
            f"{ppl[o.n]:.2f}" if o.n in ppl else "-",
            f"{o.seconds:.0f}s",
        )
    console.print(table)
    counts = store.corpus_counts()
    kept = sum(v for k, v in counts.items() if k.endswith(":accepted"))
    rejected = sum(v for k, v in counts.items() if k.endswith(":rejected"))
    latest = store.latest_checkpoint()
    console.print(
        f"corpus: {kept} kept, {rejected} rejected  |  "
        f"model: {latest.layers if latest else 0} layers  |  checkpoint: "
        f"{latest.path if latest else '-'}\ndatabase: {store.path}  |  "
        f"settings: {workspace / CONFIG_FILE}",
        highlight=False,
    )


# ---------------------------------------------------------------------- status
@cli.command()
@workspace_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_user_errors
def status(workspace: Path, as_json: bool) -> None:
    """Show cycles, corpus, the latest checkpoint and the model's size (read-only)."""
    settings = load_settings(workspace)
    with Store.open(workspace, readonly=True) as store:
        report = status_report(store, settings)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    table = Table(title=f"cycles in {workspace}")
    for column in ("cycle", "stage", "layers", "status", "phase", "train loss", "held-out ppl"):
        table.add_column(column, justify="right")
    for c in report["cycles"]:
        table.add_row(
            str(c["n"]),
            str(c["stage"]),
            str(c["layers"]),
            c["status"],
            c["phase"],
            _fmt(c.get("train_loss")),
            _fmt(c.get("heldout_ppl")),
        )
    console.print(table)
    console.print("corpus: " + ", ".join(f"{k}={v}" for k, v in report["corpus"].items()))
    stage = report["stage"]
    target = stage["corpus_target"]
    progress = f"  corpus {stage['accepted']:,}/{target:,} toward its target" if target else ""
    console.print(f"stage {stage['index']}: {stage['name']}{progress}", highlight=False)
    model = report.get("model")
    if model:
        console.print(
            f"model: {model['layers']} layers, {model['params']:,} parameters, "
            f"{model.get('flops_per_token', 0):,} FLOPs/token  |  {model['path']}",
            highlight=False,
        )


def status_report(store: Store, settings: Settings) -> dict[str, Any]:
    from dte_aar.store import PHASES

    ppl = store.metric_by_cycle("heldout_ppl")
    loss = store.metric_by_cycle("train_loss")
    cycles = []
    for row in store.cycles():
        done = [p for p in PHASES if row[f"phase_{p}"] == "done"]
        cycles.append(
            {
                "n": row["n"],
                "stage": row["stage"],
                "layers": row["layers"],
                "status": row["status"],
                "phase": done[-1] if done else "-",
                "train_loss": loss.get(row["n"]),
                "heldout_ppl": ppl.get(row["n"]),
            }
        )
    counts = store.corpus_counts()
    index = cycles[-1]["stage"] if cycles else 1
    stage = settings.stages[min(index, len(settings.stages)) - 1]
    report: dict[str, Any] = {
        "cycles": cycles,
        "corpus": counts,
        "stage": {
            "index": index,
            "name": stage.name,
            "corpus_target": stage.corpus_target,
            "accepted": sum(v for k, v in counts.items() if k.endswith(":accepted")),
        },
    }
    latest = store.latest_checkpoint()
    if latest:
        report["model"] = {
            "layers": latest.layers,
            "path": str(latest.path),
            **model_size(latest.path),
        }
    return report


def model_size(path: Path) -> dict[str, int]:
    """Parameters and FLOPs/token from the checkpoint's sidecar config (no weights loaded)."""
    from dte_aar.model import ModelConfig, config_flops_per_token, config_num_params

    try:
        meta = json.loads(Path(path).with_suffix(".json").read_text())
        config = ModelConfig(**meta["config"])
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return {"params": 0}
    return {"params": config_num_params(config), "flops_per_token": config_flops_per_token(config)}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# ---------------------------------------------------------------------- plugins
@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List loaded plugins (name, version, hooks), or scaffold a new one."""
    if ctx.invoked_subcommand is not None:
        return
    pm = manager()
    if as_json:
        failures = [vars(f) for f in pm.failures]
        click.echo(json.dumps({"plugins": list(pm.describe()), "failures": failures}, indent=2))
        return
    table = Table()
    for column in ("plugin", "version", "hooks", "provides"):
        table.add_column(column)
    for row in pm.describe():
        table.add_row(
            row["name"], row["version"], ", ".join(row["hooks"]), ", ".join(row["components"])
        )
    console.print(table)
    for failure in pm.failures:
        err_console.print(
            f"[yellow]failed:[/yellow] {failure.plugin} ({failure.where}): {failure.error}",
            highlight=False,
        )


@plugins.command("new")
@click.argument("name")
@click.option("--kind", type=click.Choice(["generator", "curator"]), default="curator")
@click.option(
    "--directory",
    "-d",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to create the package (default: ./dte-NAME).",
)
@_user_errors
def plugins_new(name: str, kind: str, directory: Path | None) -> None:
    """Scaffold an installable plugin package: pyproject, a skeleton, a passing test."""
    from dte_aar.scaffold import scaffold

    target = scaffold(name, kind, directory)
    console.print(f"created {target}: `pip install -e {target}` then `dte plugins`")


# ---------------------------------------------------------------------- arena
@cli.group()
def arena() -> None:
    """Import files into the workspace corpus; check or summarise an arena."""


@arena.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@workspace_option
@click.option("--strict", is_flag=True, help="Refuse the whole import on any problem.")
@_user_errors
def arena_import(paths: tuple[Path, ...], workspace: Path, strict: bool) -> None:
    """Import .txt/.md, source files and OpenAI chat JSONL into the corpus."""
    settings = load_settings(workspace)
    speaker = load_arena(settings.arena).identity.name
    files = [p for path in paths for p in (sorted(path.rglob("*")) if path.is_dir() else [path])]
    rows, problems = [], []
    for path in (p for p in files if p.is_file()):
        examples, issues = read_examples(path.resolve(), speaker)
        problems.extend(issues)
        rows.extend({"source": "import", "origin": e.origin, "text": e.text} for e in examples)
    for problem in problems:
        err_console.print(f"[yellow]{problem}[/yellow]", highlight=False)
    if strict and problems:
        raise UserError(f"import refused: {len(problems)} problem(s), nothing imported (--strict)")
    workspace.mkdir(parents=True, exist_ok=True)
    with Store.open(workspace) as store:
        fresh = [r for r in rows if not store.hash_exists(text_hash(r["text"]))]
        added = store.add_samples(fresh)
    skipped = len(rows) - added
    console.print(
        f"imported {added} examples from {len(files)} file(s); "
        f"{skipped} duplicates skipped, {len(problems)} problem(s) reported"
    )


@arena.command("check")
@click.argument("name_or_path", required=False)
@workspace_option
@_user_errors
def arena_check(name_or_path: str | None, workspace: Path) -> None:
    """Validate an arena (default: the workspace's); exit 1 if anything is wrong."""
    target = name_or_path or load_settings(workspace).arena
    loaded, problems = check_arena(target)
    for problem in problems:
        err_console.print(f"[yellow]{problem}[/yellow]", highlight=False)
    if loaded is None or problems:
        raise click.exceptions.Exit(1)
    console.print(
        f"ok: {loaded.path} ({len(loaded.seed)} examples, {len(loaded.prompts)} prompts, "
        f"{len(loaded.probes)} probes)",
        highlight=False,
    )


@arena.command("show")
@click.argument("name_or_path", required=False)
@workspace_option
@_user_errors
def arena_show(name_or_path: str | None, workspace: Path) -> None:
    """Summarise an arena: examples, bytes and tokens by source, prompts, probes."""
    from dte_aar.arena_stats import arena_summary

    settings = load_settings(workspace)
    loaded = load_arena(name_or_path or settings.arena)
    summary = arena_summary(loaded, workspace, settings)
    table = Table(title=f"{loaded.name}  ({loaded.path})")
    for column in ("source", "examples", "bytes", "tokens"):
        table.add_column(column, justify="right")
    for row in summary["rows"]:
        table.add_row(
            row["source"], str(row["examples"]), f"{row['bytes']:,}", f"{row['tokens']:,}"
        )
    console.print(table)
    console.print(
        f"prompts: {len(loaded.prompts)}  probes: {len(loaded.probes)}  "
        f"self-reference: {', '.join(loaded.identity.self_reference)}  "
        f"tokens counted with: {summary['tokenizer']}",
        highlight=False,
    )


# ---------------------------------------------------------------------- config
@cli.command("config")
@workspace_option
@click.option("--reference", is_flag=True, help="Print the settings reference (Markdown).")
@_user_errors
def config_cmd(workspace: Path, reference: bool) -> None:
    """Print the effective settings (dte.toml + DTE_* overrides) as JSON."""
    if reference:
        click.echo(config_reference_markdown())
        return
    click.echo(json.dumps(load_settings(workspace).model_dump(mode="json"), indent=2))


# ---------------------------------------------------------------------- train
@cli.command("train")
@workspace_option
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Ranks on this machine: one per GPU, or CPU ranks (gloo).")  # fmt: skip
@click.option("--cycles", "-n", type=int, help="Cycles to run now (default: settings.cycles).")
@_user_errors
def train_cmd(workspace: Path, nproc: int, cycles: int | None) -> None:
    """Run bootstrap cycles with data-parallel training under torchrun (DDP; FSDP for large).

    Rank 0 runs the whole loop and alone writes SQLite and checkpoints; the other ranks
    join each cycle's training. The global batch stays `train.batch_size`."""
    from dte_aar.cycle import resolve_components
    from dte_aar.distributed import launch
    from dte_aar.train import micro_batching

    settings = load_settings(workspace, cycles=cycles)
    load_arena(settings.arena)
    resolve_components(settings, manager())
    try:
        micro_batching(settings.train.batch_size, settings.train.micro_batch_size, nproc)
    except ValueError as exc:
        raise UserError(f"train.batch_size: {exc}") from None
    plugins_dir = click.get_current_context().find_root().params.get("plugins_dir")
    if code := launch(nproc, workspace, cycles, plugins_dir):
        sys.exit(code)


# ---------------------------------------------------------------------- entry
cli.add_command(watch_command)
cli.add_command(report_command)


def main() -> None:
    """Console entry point."""
    cli()
