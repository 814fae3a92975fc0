"""The cards a flashing station sees arrive: removable disks in `/sys/block`, watched.

`Watcher` remembers what was present when it started (never a candidate) and, on each look,
returns the disks that were not there at the previous look and hold a medium: a card
pushed into a reader (its size goes from 0 to the card's, and its `diskseq` changes), or a
USB stick plugged in. A disk that goes away and comes back is new again; a disk whose
medium stayed (the same `diskseq`) is not, whatever its size does meanwhile.

- It looks when udev says a block device was added or changed (`pyudev`, real libudev), and
  every `interval` seconds anyway; with no udev (a container, or a fake root) it only polls.
- Everything is read under `system_root` (`<root>/sys/block`, `<root>/dev/<name>`), so the
  tests run a station over a fabricated sysfs with files standing in for the disks.
- Which disks count: removable ones, and disks on USB or MMC (`target.block_target` judges
  each one fully before it is written). Loop, RAM, zram, device-mapper, md and nbd devices
  never do.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.fleet.destination import BlockDestination
from builder.fleet.target import block_target

log = logging.getLogger("pifleet.flash")

_NEVER = ("loop", "ram", "zram", "dm-", "md", "nbd", "sr", "fd")


@dataclass(frozen=True)
class Seen:
    """One disk at one look: what makes a newly pushed card differ from the empty reader."""

    name: str
    dev: str
    seq: str
    has_medium: bool

    @property
    def identity(self) -> tuple[str, str, str | bool]:
        """The medium: the kernel's disk sequence number (new at every media change, since
        Linux 5.15), else (an older kernel) whether a medium is in."""
        return (self.name, self.dev, self.seq if self.seq not in ("", "0") else self.has_medium)


def _read(path: Path) -> str:
    """A sysfs value; what a device says need not be UTF-8 (undecodable bytes shown as U+FFFD)."""
    try:
        return path.read_bytes().decode("utf-8", errors="replace").strip()
    except OSError:
        return ""


def look(system_root: Path) -> dict[Seen, Path]:
    """Every disk in `<root>/sys/block` that could be a card, with its sysfs directory."""
    found: dict[Seen, Path] = {}
    block = system_root / "sys/block"
    with contextlib.suppress(OSError):
        for entry in sorted(block.iterdir()):
            if entry.name.startswith(_NEVER):
                continue
            size = _read(entry / "size")
            key = Seen(
                entry.name, _read(entry / "dev"), _read(entry / "diskseq"), size not in ("", "0")
            )
            found[key] = entry
    return found


class Watcher:
    """New cards, from the moment it is made."""

    def __init__(self, system_root: Path = Path("/"), interval: float = 0.5) -> None:
        self.root = system_root
        self.interval = interval
        self._before = {key.identity for key in look(system_root)}
        self._monitor = self._udev() if system_root == Path("/") else None

    def _udev(self) -> Any:
        try:
            import pyudev  # type: ignore[import-untyped]

            monitor = pyudev.Monitor.from_netlink(pyudev.Context())
            monitor.filter_by("block")
            monitor.start()
            return monitor
        except Exception as exc:  # no libudev, no netlink socket: polling still works
            log.debug("udev not available (%s); polling /sys/block", exc)
            return None

    def wait(self, timeout: float | None = None) -> None:
        """Until udev reports a block event, or `timeout` (default: the poll interval)."""
        limit = self.interval if timeout is None else timeout
        if self._monitor is None:
            time.sleep(limit)
            return
        deadline = time.monotonic() + limit
        while (left := deadline - time.monotonic()) > 0:
            event = self._monitor.poll(timeout=left)
            if event is not None and event.action in ("add", "change"):
                return

    def new_cards(self) -> list[BlockDestination]:
        """The disks with a medium that were not there at the previous look."""
        now = look(self.root)
        fresh = [key for key in now if key.identity not in self._before and key.has_medium]
        self._before = {key.identity for key in now}
        cards = []
        for key in fresh:
            node = now[key].resolve()
            cards.append(block_target(self.root / "dev" / key.name, node, self.root))
        return [c for c in cards if c.removable or c.transport in ("usb", "mmc")]
