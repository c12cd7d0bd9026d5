"""Progress reporting, kept apart from rich so plugins, tests and the daemon share one API.

A plugin calls ``task = ctx.progress.task("training", total=steps)`` then
``task.advance(1, loss=2.31, tok_s=5400)``; the CLI renders that as a rich bar, the daemon as
log lines, tests as nothing.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Protocol


class ProgressTask(Protocol):
    def advance(self, n: int = 1, **fields: Any) -> None: ...

    def close(self) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: int | None = None) -> ProgressTask: ...


class _NullTask:
    def advance(self, n: int = 1, **fields: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NullTask:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullProgress:
    """Reports nothing: for tests and library use."""

    def task(self, description: str, total: int | None = None) -> _NullTask:
        return _NullTask()


class RichTask:
    def __init__(self, progress: Any, task_id: Any) -> None:
        self._progress = progress
        self._id = task_id

    def advance(self, n: int = 1, **fields: Any) -> None:
        info = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        self._progress.update(self._id, advance=n, info=info)

    def close(self) -> None:
        self._progress.update(self._id, visible=True)
        self._progress.stop_task(self._id)

    def __enter__(self) -> RichTask:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RichProgress:
    """Rich progress bars: one line per task with its live fields (loss, tokens/s...)."""

    def __init__(self, console: Any = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as _Rich

        self._rich = _Rich(
            TextColumn("[bold]{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
        )

    def __enter__(self) -> RichProgress:
        self._rich.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._rich.stop()

    def task(self, description: str, total: int | None = None) -> RichTask:
        return RichTask(self._rich, self._rich.add_task(description, total=total, info=""))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
