"""Disk space: checked before a large copy when the need is known, and a full disk reported as
one line naming the folder, what was being written and how much room there was. A full disk
is a runtime failure (exit 1), however it is found: before the copy, while writing, or while
downloading."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from builder.util.console import human_size
from builder.util.errors import BuildError


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def require_space(folder: Path, needed: int, what: str) -> None:
    """Refuse before writing when `folder` has less than `needed` bytes free."""
    free = free_bytes(folder)
    if needed > free:
        raise BuildError(
            f"{folder}: not enough free space for {what}: needs about {human_size(needed)}, "
            f"{human_size(free)} free"
        )


@contextlib.contextmanager
def reported_full(folder: Path, what: str) -> Iterator[None]:
    """Turn 'No space left on device' while writing into `folder` into one clear line."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise BuildError(
            f"{folder}: disk full while writing {what} ({human_size(free_bytes(folder))} free)"
        ) from None
