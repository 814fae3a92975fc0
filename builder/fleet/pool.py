"""Which fleet device the next card becomes.

The fleet's devices in inventory order, less those the ledger already has an `ok` row for
with this image (`--reflash DEVICE` puts one back), or exactly the devices named with
`--device`, in order. A card that fails gives its device back, at its place in the order.
Thread-safe: a station's rounds take and give back from their own threads.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from builder.util.errors import UserError

if TYPE_CHECKING:
    from builder.config.model import Device, FleetConfig


class Pool:
    def __init__(self, order: list[Device]) -> None:
        self._order = {d.hostname: n for n, d in enumerate(order)}
        self._left = list(order)
        self._lock = threading.Lock()

    def take(self) -> Device | None:
        with self._lock:
            return self._left.pop(0) if self._left else None

    def give_back(self, device: Device) -> None:
        with self._lock:
            self._left.append(device)
            self._left.sort(key=lambda d: self._order.get(d.hostname, len(self._order)))

    def __len__(self) -> int:
        with self._lock:
            return len(self._left)


def pool_for(config: FleetConfig, flashed: set[str], named: list[str], reflash: list[str]) -> Pool:
    """The pool of a run; names that are not devices, or given twice, are one-line errors."""
    from builder.fleet.personalize import find_device

    for option, names in (("--device", named), ("--reflash", reflash)):
        seen: set[str] = set()
        for name in names:
            find_device(config, name)
            if name in seen:
                raise UserError(f"{option} {name}: given twice (one card per device)")
            seen.add(name)
    if named:
        return Pool([find_device(config, name) for name in named])
    done = flashed - set(reflash)
    return Pool([d for d in config.devices if d.hostname not in done])


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
