"""Outputs appear complete or not at all.

Every file pifleet produces is written to a temporary name beside its
destination and renamed into place only when finished. A failure or Ctrl-C
removes the temporary file, so an interrupted build leaves nothing behind.
The temporary file is created here, 0600 from its first byte (O_CREAT|O_EXCL|
O_NOFOLLOW): images hold the join token while they are written. A run killed
with SIGKILL leaves its temporary file; the next run in that folder removes it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

from builder.util import batch
from builder.util.errors import BuildError, PifleetError, UserError
from builder.util.private import create_private, leftovers

# `.<destination name>.pifleet-<pid>.tmp`: pifleet's own temporary names, nothing else.
_TEMP_NAME = re.compile(r"\..+\.pifleet-(?P<pid>[0-9]{1,10})\.tmp")


# This process's temporary files that exist or are about to: a signal can land between a
# file's creation and the `try` that removes it (or between a context manager's __enter__
# and its registration in an ExitStack); the CLI's interrupt path removes what is left here.
_LIVE: set[Path] = set()


def remove_own_temps() -> list[Path]:
    """Remove this process's temporary files still on disk (on the way out of a Ctrl-C), and
    its staging folders that have not committed (`batch`)."""
    batch.remove_own()
    removed = []
    for tmp in sorted(_LIVE):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    _LIVE.clear()
    return removed


def temp_path_for(dest: Path) -> Path:
    """The temporary name used while `dest` is being written (same directory, hidden)."""
    return dest.with_name(f".{dest.name}.pifleet-{os.getpid()}.tmp")


def remove_stale(folder: Path) -> list[Path]:
    """Remove temporary files that killed pifleet runs of this user left in `folder`, and
    settle their staging folders (`batch.recover`: committed ones finish)."""
    batch.recover(folder)
    removed = []
    with contextlib.suppress(OSError):
        for m in leftovers(folder, _TEMP_NAME, dirs=False):
            path = folder / m.string
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def replace_when_done(dest: Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a new, empty 0600 file beside `dest`; rename it onto `dest` if the block succeeds.

    The caller writes the file at the yielded path (`private.open_private` accepts
    it). On any exception (including KeyboardInterrupt) the temporary file is
    removed and `dest` is untouched. `mode` is applied just before the rename.
    A folder that cannot take the file is one line: a directory as `dest`, a read-only or
    missing folder (exit 2), a full disk (exit 1).
    """
    if dest.is_dir():
        raise UserError(f"{dest}: is a directory; give the output's file name")
    remove_stale(dest.parent)
    tmp = temp_path_for(dest)
    _LIVE.add(tmp)  # before it exists: see _LIVE
    try:
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.close(create_private(tmp))
        except OSError as exc:
            raise cannot_write(dest, exc) from None
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):  # absent, or never made (a read-only folder)
            tmp.unlink()
        raise
    finally:
        _LIVE.discard(tmp)


@contextlib.contextmanager
def reported_as(tmp: Path, shown: Path) -> Iterator[None]:
    """Errors about the temporary file `tmp` name `shown` (the file the user gave) instead:
    the temporary name means nothing to the user and is gone by the time they read it."""
    try:
        yield
    except PifleetError as exc:
        message = str(exc)
        if str(tmp) not in message:
            raise
        raise type(exc)(message.replace(str(tmp), str(shown))) from None


def cannot_write(dest: Path, exc: OSError) -> PifleetError:
    """One line for a file that could not be created at `dest`."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return BuildError(f"{dest.parent}: disk full while writing {dest.name}")
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR):
        return UserError(f"{dest}: cannot write in {dest.parent}: {reason}")
    return BuildError(f"{dest}: cannot be written: {reason}")


def write_atomic(dest: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `dest` atomically, with `mode`, fsynced."""
    with replace_when_done(dest, mode) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.write(fd, data)
            os.fsync(fd)
        except OSError as exc:
            raise cannot_write(dest, exc) from None
        finally:
            os.close(fd)
