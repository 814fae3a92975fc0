"""Where pifleet's human-facing output goes: logging set-up and progress bars.

Progress bars show on a terminal only; in CI (non-tty) or with --quiet the
same work runs silently except for warnings and errors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TextIO

_quiet = False


class _Watched:
    """Standard output that remembers its first failed write (a closed pipe, a full disk):
    the CLI then tells that failure from any other OSError. It wraps the stream without
    owning it (a TextIOWrapper of its own would close the file when collected)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.failure: OSError | None = None

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            self.failure = self.failure or exc
            raise

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            self.failure = self.failure or exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def watch_stdout() -> None:
    """Put a `_Watched` around sys.stdout (once; a no-op without a standard output)."""
    if sys.stdout is not None and not isinstance(sys.stdout, _Watched):
        sys.stdout = _Watched(sys.stdout)


def stdout_failure() -> OSError | None:
    """The first write to standard output that failed, if any. Standard output is then pointed
    at /dev/null, so that the interpreter's own flush at exit neither fails nor prints a
    traceback."""
    out = sys.stdout
    failure = out.failure if isinstance(out, _Watched) else None
    if failure is not None:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, out.fileno())
        os.close(null)
    return failure


def exit_if_stdout_failed() -> None:
    """Standard output could not take what was printed: one line, exit 1 (a run-time failure).
    Flushed here, not at exit, where the failure would go unreported; argparse swallows a
    failed write of --help, so what `watch_stdout` saw counts too. A reader that closed the
    pipe (`pifleet images | head -1`) has what it wanted: no line for that."""
    with contextlib.suppress(OSError):
        sys.stdout.flush()
    failure = stdout_failure()
    if failure is None:
        return
    if not isinstance(failure, BrokenPipeError):
        reason = failure.strerror or str(failure)
        print(f"pifleet: error: cannot write to standard output: {reason}", file=sys.stderr)
    raise SystemExit(1)


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
