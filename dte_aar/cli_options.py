"""Options several commands share, in a module light enough for lazily loaded commands."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

DEFAULT_WORKSPACE = "dte-workspace"
WORKSPACE_HELP = "Workspace directory (dte.toml, dte.db, checkpoints). Env: DTE_WORKSPACE."


def workspace_option(help: str = WORKSPACE_HELP) -> Callable[[Any], Any]:
    """``--workspace/-w DIR``, defaulting to ``./dte-workspace`` or ``$DTE_WORKSPACE``."""
    return click.option(
        "--workspace",
        "-w",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_WORKSPACE,
        envvar="DTE_WORKSPACE",
        show_default=True,
        help=help,
    )


def workspace_argument_or_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``[WORKSPACE]`` or ``-w/--workspace``, for the commands that look into a workspace
    (`dte watch`, `dte report`); pass both to :func:`resolve_workspace`."""
    command = click.option(
        "--workspace",
        "-w",
        "workspace_option",
        type=click.Path(file_okay=False, path_type=Path),
        help=f"Same as WORKSPACE (default: $DTE_WORKSPACE or ./{DEFAULT_WORKSPACE}).",
    )(command)
    return click.argument(
        "workspace", required=False, type=click.Path(file_okay=False, path_type=Path)
    )(command)


def resolve_workspace(workspace: Path | None, option: Path | None) -> Path:
    """The positional WORKSPACE, else -w/--workspace, else $DTE_WORKSPACE, else the default."""
    return workspace or option or Path(os.environ.get("DTE_WORKSPACE") or DEFAULT_WORKSPACE)
