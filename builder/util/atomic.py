"""Outputs appear complete or not at all.

Every file pifleet produces is written to a temporary name beside its
destination and renamed into place only when finished. A failure or Ctrl-C
removes the temporary file, so an interrupted build leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def temp_path_for(dest: Path) -> Path:
    """The temporary name used while `dest` is being written (same directory, hidden)."""
    return dest.with_name(f".{dest.name}.pifleet-{os.getpid()}.tmp")


@contextlib.contextmanager
def replace_when_done(dest: Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it onto `dest` if the block succeeds.

    The caller creates the file at the yielded path. On any exception (including
    KeyboardInterrupt) the temporary file is removed and `dest` is untouched.
    """
    tmp = temp_path_for(dest)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_atomic(dest: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `dest` atomically, with `mode`, fsynced."""
    with replace_when_done(dest, mode) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
