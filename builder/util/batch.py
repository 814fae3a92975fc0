"""A run's outputs appear together: all of them, or none, even after SIGKILL.

Everything one run writes into an output folder (images, their side files, new device
identities, known_hosts) is staged in one private folder inside it,
`.pifleet-run-<pid>/`, laid out as the outputs will be. When all of it is written the
run commits: it writes the marker `COMMITTED` into that folder (the commit point) and
then renames every entry into place. Before the marker nothing has a final name; after
it the run is complete, and if it is killed during the renames (milliseconds) the next
pifleet run writing into that folder finishes them (`recover`). A staging folder of a
dead run without the marker is removed.

Renames stay within one filesystem, so each is atomic; a new identity folder moves as a
whole. SIGINT and SIGTERM wait while the run commits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import stat
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType, TracebackType

from builder.util.errors import BuildError, UserError
from builder.util.private import create_private, leftovers

log = logging.getLogger("pifleet.batch")

MARKER = "COMMITTED"
_RUN_DIR = re.compile(r"\.pifleet-run-(?P<pid>[0-9]{1,10})")
_LAST = ("SHA256SUMS",)  # renamed last: it lists the others
# Staging folders of this process (the CLI's interrupt path removes the uncommitted ones).
LIVE: set[Path] = set()


def run_dir_for(folder: Path) -> Path:
    return folder / f".pifleet-run-{os.getpid()}"


def recover(folder: Path) -> list[Path]:
    """Finish the commits of dead runs in `folder` and remove their uncommitted staging;
    returns the staging folders dealt with."""
    found = []
    with contextlib.suppress(OSError):
        for m in leftovers(folder, _RUN_DIR, dirs=True):
            path = folder / m.string
            settle(path, folder)
            found.append(path)
    return found


def settle(staging: Path, folder: Path) -> None:
    """A staging folder no run is using: moved into place if committed, else removed."""
    if (staging / MARKER).is_file():
        log.info("%s: finishing the outputs of an interrupted run", folder)
        _move_tree(staging, folder, top=True)
    shutil.rmtree(staging, ignore_errors=True)


def remove_own() -> None:
    """On the way out of an interrupted command: this process's uncommitted staging."""
    for staging in sorted(LIVE):
        if not (staging / MARKER).exists():
            shutil.rmtree(staging, ignore_errors=True)
    LIVE.clear()


class Batch:
    """The outputs of one run into `folder`; use as a context manager and call `commit`.

    Leaving the block without a commit (an error, Ctrl-C) removes everything staged.
    `protected` names the run's inputs (what -> path): an output onto one is refused.
    """

    def __init__(self, folder: Path, protected: Mapping[str, Path] | None = None) -> None:
        self.folder = folder
        self.root = run_dir_for(folder)
        self.protected = dict(protected or {})
        self._staged: dict[Path, Path] = {}  # final -> staged
        self._modes: dict[Path, int] = {}
        self.committed = False

    def __enter__(self) -> Batch:
        recover(self.folder)
        LIVE.add(self.root)  # before it exists: a signal may land right after the mkdir
        if self.root.exists():  # a dead run's under a reused pid (alive(): this process)
            settle(self.root, self.folder)
        os.mkdir(self.root, 0o700)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.committed:
            if (self.root / MARKER).exists():
                with contextlib.suppress(OSError):  # else the next run finishes it
                    settle(self.root, self.folder)  # committed, then failed while renaming
            else:
                shutil.rmtree(self.root, ignore_errors=True)
        LIVE.discard(self.root)

    def staged(self, final: Path) -> Path:
        """Where `final` (a path inside the folder) is staged; its parents made 0700."""
        refuse_overwriting(final, self.protected)
        relative = final.relative_to(self.folder)
        path = self.root / relative
        current = self.root
        for part in relative.parts[:-1]:
            current = current / part
            with contextlib.suppress(FileExistsError):
                os.mkdir(current, 0o700)
        return path

    def file(self, final: Path, mode: int = 0o600) -> Path:
        """A new, empty 0600 file staged for `final` (given `mode` when the run commits);
        refuses a name this run already wrote."""
        if final in self._staged:
            raise UserError(f"{final}: written twice by this run (a device named like the fleet?)")
        path = self.staged(final)
        os.close(create_private(path))
        self._staged[final] = path
        if mode != 0o600:
            self._modes[path] = mode
        return path

    def commit(self) -> None:
        """Make every staged output appear under its final name."""
        for path, mode in self._modes.items():
            os.chmod(path, mode)
        with _signals_held():
            fd = create_private(self.root / MARKER)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                _move_tree(self.root, self.folder, top=True)
            except OSError as exc:
                raise BuildError(
                    f"{self.folder}: moving the outputs into place failed: {exc.strerror}; "
                    "the next run in this folder finishes it"
                ) from None
            self.committed = True
            shutil.rmtree(self.root, ignore_errors=True)


def _move_tree(staging: Path, dest: Path, top: bool = False) -> None:
    """Rename every entry of `staging` onto the same name in `dest`; a folder that exists
    there already is merged into, one that does not moves whole."""
    entries = sorted(os.listdir(staging), key=lambda n: (n in _LAST, n))
    for name in entries:
        if top and name == MARKER:
            continue
        source, target = staging / name, dest / name
        if stat.S_ISDIR(os.lstat(source).st_mode) and _is_dir(target):
            _move_tree(source, target)
        else:
            os.replace(source, target)
    _fsync_dir(dest)


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM are held back while the block runs, then delivered."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for signum in caught:
            signal.raise_signal(signum)


def same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` name one file: the same path, through symlinks, or a hard link."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwriting(dest: Path, protected: Mapping[str, Path]) -> None:
    """An output is never written onto one of the run's inputs (`what` -> path)."""
    for what, path in protected.items():
        if same_file(dest, path):
            raise UserError(f"{dest}: is {what} ({path}); choose another output")
