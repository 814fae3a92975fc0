"""Files and folders that may hold a secret: private from their first byte.

A file that may hold a secret (an image with the join token, a staging copy
of a host key) is created 0600 with O_CREAT|O_EXCL|O_NOFOLLOW, never chmod-ed
afterwards; a staging folder is 0700 and carries this process's id in its
name. A run killed with SIGKILL cannot clean up after itself, so the next run
removes what a dead pifleet process left: only names pifleet itself makes,
matched strictly, owned by this user, of processes no longer alive.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from builder.util.errors import UserError

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# A private staging folder: pifleet-<job>-<pid>-<8 characters of mkdtemp>.
_DIR_NAME = re.compile(r"pifleet-(?P<job>[a-z0-9]+)-(?P<pid>[0-9]{1,10})-[a-z0-9_]{8}")


def create_private(path: Path) -> int:
    """A write descriptor on a new file, 0600 from its first byte; refuses an existing name."""
    return os.open(path, _CREATE, 0o600)


def open_private(path: Path) -> BinaryIO:
    """A binary writer on the empty private file at `path`, creating it (0600) when absent.

    An existing file is accepted only when it is what `create_private` made:
    a regular, empty file of this user that nobody else can read.
    """
    try:
        return os.fdopen(create_private(path), "wb")
    except FileExistsError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    mine = st.st_uid == os.geteuid() and not st.st_mode & 0o077
    if not (stat.S_ISREG(st.st_mode) and mine and st.st_size == 0):
        os.close(fd)
        raise FileExistsError(errno.EEXIST, "exists and is not a fresh private file", str(path))
    return os.fdopen(fd, "wb")


def write_private(path: Path, data: bytes) -> None:
    with open_private(path) as f:
        f.write(data)


def make_private_dirs(path: Path) -> None:
    """Create `path` and its missing parents, each 0700 whatever the umask (an existing
    folder is left as it is)."""
    missing = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
            os.chmod(folder, 0o700)  # only ever narrower than 0700 before: the umask


def read_input(path: Path, prefix: str, *, private: bool) -> bytes:
    """The bytes of a file the user named, with one-line errors after `prefix` (the key);
    `private` refuses a file that other users may read, naming the chmod that fixes it."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{prefix}{path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{prefix}{path} is a directory") from None
    except OSError as exc:
        raise UserError(f"{prefix}{path}: {exc.strerror}") from None
    if private and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(
            f"{prefix}{path} is open to other users "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )
    return data


def require_own(path: Path, what: str, directory: bool) -> None:
    """Refuse `path` (which exists) unless it is this user's own regular file or folder,
    not a symlink, and neither group nor others may write it."""
    st = os.lstat(path)
    kind = "folder" if directory else "file"
    if stat.S_ISLNK(st.st_mode):
        raise UserError(f"{path}: a symbolic link: refusing {what} kept elsewhere")
    if not (stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)):
        raise UserError(f"{path}: not a {kind}: refusing it as {what}")
    if st.st_uid != os.geteuid():
        raise UserError(
            f"{path}: owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}): "
            f"refusing {what} another user may have put there"
        )
    if st.st_mode & 0o022:
        raise UserError(
            f"{path}: group or others may write this {kind} (mode {stat.S_IMODE(st.st_mode):04o}): "
            f"refusing {what} another user may have changed (chmod go-w if it is yours)"
        )


def alive(pid: int) -> bool:
    """Whether process `pid` exists (a process of another user counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale(path: Path, pid: int) -> bool:
    """Whether `path` (a pifleet name of process `pid`) is a leftover of this user's dead run."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    return st.st_uid == os.geteuid() and not stat.S_ISLNK(st.st_mode) and not alive(pid)


def leftovers(folder: Path, pattern: re.Pattern[str], dirs: bool) -> Iterator[re.Match[str]]:
    """The entries of `folder` whose whole name matches `pattern` (with a `pid` group), of
    the kind asked for (folders or files, never a symlink), that this user's dead runs left."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            m = pattern.fullmatch(entry.name)
            kind = entry.is_dir if dirs else entry.is_file
            if m and kind(follow_symlinks=False) and stale(Path(entry.path), int(m["pid"])):
                yield m


def remove_stale_dirs(parent: Path, job: str) -> list[Path]:
    """Remove `pifleet-<job>-<pid>-*` folders in `parent` left by dead runs; the ones removed."""
    removed = []
    for m in leftovers(parent, _DIR_NAME, dirs=True):
        if m["job"] == job:
            path = parent / m.string
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def remove_own_dirs(parent: Path | None = None) -> list[Path]:
    """Remove every staging folder of this process in `parent` (the temporary folder).

    Called on the way out of an interrupted command: a signal can land between the
    folder's creation and the code that would remove it."""
    where = Path(parent or tempfile.gettempdir())
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(where):
            m = _DIR_NAME.fullmatch(entry.name)
            if m and int(m["pid"]) == os.getpid() and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def private_dir(job: str, parent: Path | None = None) -> Iterator[Path]:
    """A fresh 0700 folder `pifleet-<job>-<pid>-XXXXXXXX` (in the temporary folder unless
    `parent`), removed afterwards; leftovers of dead runs there are removed first."""
    where = Path(parent or tempfile.gettempdir())
    remove_stale_dirs(where, job)
    path = Path(tempfile.mkdtemp(prefix=f"pifleet-{job}-{os.getpid()}-", dir=where))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
