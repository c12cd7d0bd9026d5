"""Options several commands share, in a module light enough for lazily loaded commands."""

from __future__ import annotations

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
