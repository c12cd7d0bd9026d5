"""`dte watch`: the Textual app that looks into a running workspace without disturbing it.

``queries`` reads the store (no Textual import: the report uses it too); ``widgets`` are the
small views; ``app`` holds the one piece of state, the latest :class:`queries.Snapshot`.
This module only defines the click command, so adding it to the CLI imports no Textual.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

DEFAULT_WORKSPACE = "dte-workspace"


class _UserError(click.ClickException):
    exit_code = 2


def resolve_workspace(workspace: Path | None, option: Path | None) -> Path:
    """The positional WORKSPACE, else -w/--workspace, else $DTE_WORKSPACE, else the default."""
    return workspace or option or Path(os.environ.get("DTE_WORKSPACE") or DEFAULT_WORKSPACE)


@click.command("watch")
@click.argument("workspace", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--workspace",
    "-w",
    "workspace_option",
    type=click.Path(file_okay=False, path_type=Path),
    help="Same as WORKSPACE (default: $DTE_WORKSPACE or ./dte-workspace).",
)
@click.option(
    "--interval", type=float, default=1.0, show_default=True, help="Seconds between polls."
)
def watch_command(workspace: Path | None, workspace_option: Path | None, interval: float) -> None:
    """Watch a workspace live: stage, layers, losses, corpus, samples and events.

    Reads the store read-only and never slows the run. Keys: p pause, r resume, s stop the
    daemon (rows in the control table), 1/2/3 switch tabs, ? help, q quit.
    """
    from dte_aar.store import StoreError
    from dte_aar.tui.app import run

    try:
        run(resolve_workspace(workspace, workspace_option), interval=interval)
    except StoreError as exc:
        raise _UserError(str(exc)) from None
