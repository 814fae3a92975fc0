"""Which fleet device the next card becomes.

The fleet's devices in inventory order, less those the ledger already has an `ok` row for
with this image (`--reflash DEVICE` puts one back), or exactly the devices named with
`--device`, in order. A card that fails gives its device back, at its place in the order.
Thread-safe: a station's rounds take and give back from their own threads. Devices are
claimed (`Claims`) as they are taken, so that two runs on one ledger never take the same.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from builder.util.errors import BuildError, UserError

if TYPE_CHECKING:
    from builder.config.model import Device, FleetConfig


class Claims:
    """Which devices a run is flashing now: `<ledger>.claims/<device>`, each held with an
    exclusive flock for as long as its card is in progress. Two runs on one ledger (two
    stations, two terminals) never flash one device at once, and a run that dies (even by
    SIGKILL) lets go of its claims with its descriptors: a claim is never stale."""

    def __init__(self, ledger: Path) -> None:
        self.dir = ledger.with_name(ledger.name + ".claims")
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def claim(self, name: str) -> bool:
        """True when this run now holds `name`; False when another run does."""
        try:
            self.dir.mkdir(mode=0o755, exist_ok=True)
            fd = os.open(self.dir / name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise BuildError(f"{self.dir}: cannot claim {name}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        with self._lock:
            self._held[name] = fd
        return True

    def release(self, name: str) -> None:
        with self._lock:
            fd = self._held.pop(name, None)
        if fd is not None:
            os.close(fd)


class Pool:
    """`still_free(name)`, when given, is asked again as a device is taken: another run on
    the same ledger may have recorded it since this run read the ledger."""

    def __init__(
        self,
        order: list[Device],
        claims: Claims | None = None,
        still_free: Callable[[str], bool] | None = None,
    ) -> None:
        self._order = {d.hostname: n for n, d in enumerate(order)}
        self._left = list(order)
        self._lock = threading.Lock()
        self._claims = claims
        self._still_free = still_free

    def take(self) -> Device | None:
        """The first device no other run is flashing; None when there is none."""
        with self._lock:
            for device in list(self._left):
                if self._claims is not None and not self._claims.claim(device.hostname):
                    continue  # another run has it now (it may give it back)
                if self._still_free is not None and not self._still_free(device.hostname):
                    self._left.remove(device)  # recorded by another run meanwhile
                    self.release(device)
                    continue
                self._left.remove(device)
                return device
            return None

    def release(self, device: Device) -> None:
        """Its card is recorded (or the run gives up on it): let go of the claim."""
        if self._claims is not None:
            self._claims.release(device.hostname)

    def give_back(self, device: Device) -> None:
        with self._lock:
            self.release(device)
            self._left.append(device)
            self._left.sort(key=lambda d: self._order.get(d.hostname, len(self._order)))

    def __len__(self) -> int:
        with self._lock:
            return len(self._left)


def pool_for(
    config: FleetConfig,
    flashed: set[str],
    named: list[str],
    reflash: list[str],
    claims: Claims | None = None,
    still_free: Callable[[str], bool] | None = None,
) -> Pool:
    """The pool of a run; names that are not devices, or given twice, are one-line errors.
    `--device` names a device whatever the ledger says (a lost card is replaced so)."""
    from builder.fleet.personalize import find_device

    for option, names in (("--device", named), ("--reflash", reflash)):
        seen: set[str] = set()
        for name in names:
            find_device(config, name)
            if name in seen:
                raise UserError(f"{option} {name}: given twice (one card per device)")
            seen.add(name)
    if named:
        return Pool([find_device(config, name) for name in named], claims)
    done = flashed - set(reflash)
    again = set(reflash)

    def free(name: str) -> bool:
        return name in again or still_free is None or still_free(name)

    return Pool([d for d in config.devices if d.hostname not in done], claims, free)


def no_device_left(config: FleetConfig, flashed: set[str], wanted: int, left: int) -> str:
    """The one line for a run that has fewer devices to flash than cards."""
    total = len(config.devices)
    if left == 0:
        return (
            f"{config.source}: no device left to flash: all {total} devices have a card "
            f"flashed with this image in the ledger (--reflash DEVICE redoes one)"
        )
    return (
        f"{config.source}: {wanted} cards but only {left} of {total} devices left to flash "
        f"({len(flashed)} already flashed with this image); nothing written"
    )
