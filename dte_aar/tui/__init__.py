"""`dte watch`: the Textual app that looks into a running workspace without disturbing it.

``queries`` reads the store (no Textual import: the report uses it too); ``widgets`` are the
small views; ``app`` holds the one piece of state, the latest :class:`queries.Snapshot`.
This module only defines the click command, so adding it to the CLI imports no Textual.
"""

from __future__ import annotations

from pathlib import Path

import click

from dte_aar.cli_options import resolve_workspace, workspace_argument_or_option


class _UserError(click.ClickException):
    exit_code = 2


@click.command("watch")
@workspace_argument_or_option
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
