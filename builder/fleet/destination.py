"""Where `pifleet flash` writes: a regular file or a whole disk, each one class (as bmaptool
has `BmapCopy` and `BmapBdevCopy`), chosen once by `builder.fleet.target.describe`.

Both answer the same questions: what it is (`summary`), why it must be refused
(`refusal`, `refuse_inputs`), whether writing needs the user's consent, where the
bytes go while they are written (`prepared`), and how that place is opened
(`open_for_writing`).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from builder.util.atomic import replace_when_done
from builder.util.batch import refuse_overwriting, same_file
from builder.util.console import human_size
from builder.util.errors import BuildError, UserError


def _open_failure(name: Path, exc: OSError) -> UserError | BuildError:
    """Why opening `name` for writing failed, in one line."""
    if isinstance(exc, PermissionError):
        return UserError(f"{name}: permission denied (writing a card needs sudo or the disk group)")
    if exc.errno == errno.EBUSY:
        return UserError(f"{name}: busy: mounted or in use by another program")
    return BuildError(f"{name}: cannot open for writing: {exc.strerror}")


@dataclass(frozen=True)
class FileDestination:
    """A regular file standing in for a card (new, or holding `size` bytes already)."""

    path: Path
    size: int = 0

    def summary(self) -> str:
        held = f", {human_size(self.size)}" if self.size else ""
        return f"{self.path} (a regular file{held})"

    def refusal(self, image_size: int) -> str | None:
        return None

    def refuse_inputs(self, own: Mapping[str, Path], protected: Mapping[str, Path]) -> None:
        """Not the image or its bmap (`own`, by what they are) nor another input of the run
        (the fleet file, the base, a token file): the same path, a symlink or a hard link."""
        for what, path in own.items():
            if same_file(self.path, path):
                raise UserError(f"{self.path}: is the {what} being flashed itself")
        if self.path.name.endswith(".bmap"):
            raise UserError(
                f"{self.path}: a block map's name; an image is never written as a .bmap"
            )
        refuse_overwriting(self.path, protected)

    @property
    def needs_consent(self) -> bool:
        """Only a file that already holds data is worth asking about."""
        return self.size > 0

    @contextlib.contextmanager
    def prepared(self) -> Iterator[Path]:
        """A temporary file (0600: the image holds the join token) renamed onto the path once
        everything written to it succeeded."""
        with replace_when_done(self.path, 0o600) as tmp:
            yield tmp

    def open_for_writing(self, where: Path, size: int) -> int:
        """A fresh file of the image's size whose unmapped ranges are holes, not old data."""
        try:
            fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            os.ftruncate(fd, size)
        except OSError as exc:
            raise _open_failure(self.path, exc) from None
        return fd


@dataclass(frozen=True)
class BlockDestination:
    """A disk, as sysfs and procfs describe it (see `builder.fleet.target`); written in place."""

    path: Path
    name: str = ""  # sdb, mmcblk0
    size: int = 0
    vendor: str = ""
    model: str = ""  # the model (or an MMC card's name), without the vendor
    serial: str = ""
    transport: str = ""  # usb, mmc, or "" when neither
    removable: bool = False
    partition: bool = False
    mounted: tuple[str, ...] = ()
    holds_root: bool = False
    children: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        """Vendor and model, as shown ("Generic STORAGE DEVICE")."""
        return " ".join(filter(None, [self.vendor, self.model]))

    def summary(self) -> str:
        facts = [self.label or "unknown model", human_size(self.size)]
        if self.serial:
            facts.append(f"serial {self.serial}")
        if self.transport:
            facts.append(self.transport.upper())
        return f"{self.path} ({', '.join(facts)})"

    def refusal(self, image_size: int) -> str | None:
        """Why this disk must not be written, or None."""
        if self.holds_root:
            return f"{self.path} holds the running system's root filesystem"
        if self.partition:
            return f"{self.path} is a partition; give the whole disk"
        if not (self.removable or self.transport in ("usb", "mmc")):
            return f"{self.path} is not a removable, USB or MMC disk ({self.label or 'internal disk?'})"
        if self.mounted:
            return f"{self.path} is mounted at {', '.join(self.mounted)}; unmount it first (pifleet unmounts nothing)"
        if self.size == 0:
            return f"{self.path} has no medium (0 bytes): is a card in the reader?"
        if image_size > self.size:
            return f"{self.path} is too small: {human_size(self.size)} for a {human_size(image_size)} image"
        return None

    def refuse_inputs(self, own: Mapping[str, Path], protected: Mapping[str, Path]) -> None:
        """A disk holds none of the run's inputs as a file; `refusal` judges it."""

    @property
    def needs_consent(self) -> bool:
        return True

    @contextlib.contextmanager
    def prepared(self) -> Iterator[Path]:
        yield self.path

    def open_for_writing(self, where: Path, size: int) -> int:
        """Exclusive: the kernel refuses a disk that is mounted."""
        try:
            return os.open(where, os.O_WRONLY | os.O_EXCL)
        except OSError as exc:
            raise _open_failure(self.path, exc) from None


Destination = FileDestination | BlockDestination
