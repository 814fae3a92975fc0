"""Where pifleet's human-facing output goes: logging set-up and progress bars.

Progress bars show on a terminal only; in CI (non-tty) or with --quiet the
same work runs silently except for warnings and errors.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

_quiet = False


def setup_logging(verbosity: int, quiet: bool) -> None:
    """verbosity 0: info, 1+: debug (every external command). quiet: warnings only."""
    global _quiet
    _quiet = quiet
    level = logging.WARNING if quiet else (logging.DEBUG if verbosity > 0 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("pifleet")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class Progress(Protocol):
    def advance(self, amount: int) -> None: ...


class _Silent:
    def advance(self, amount: int) -> None:
        pass


class _Bar:
    def __init__(self, progress: object, task: object) -> None:
        self._progress = progress
        self._task = task

    def advance(self, amount: int) -> None:
        self._progress.advance(self._task, amount)  # type: ignore[attr-defined]


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Progress]:
    """A byte-count progress bar with rate and ETA on a terminal, silent otherwise."""
    if _quiet or not sys.stderr.isatty():
        yield _Silent()
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as RichProgress

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with RichProgress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield _Bar(bar, task)


def human_size(size: float) -> str:
    """1536 -> '1.5 KiB'; sizes in messages are always binary units."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
