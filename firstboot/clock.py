"""A Pi has no real-time clock: at first boot it may think it is 1970 (or the last
shutdown). TLS needs a sane clock, so the agent makes sure of one first."""

from __future__ import annotations

import time

from firstboot.paths import Root

TIMESYNC_FLAG = "/run/systemd/timesync/synchronized"


class Clock:
    """The system clock."""

    def now(self) -> float:
        return time.time()

    def set(self, value: float) -> None:
        time.clock_settime(time.CLOCK_REALTIME, value)


class RootedClock(Clock):
    """Under --root (tests): the clock is the host's plus an offset kept in <root>/run/pifleet/clock-offset,
    so a test can start the device in 1970 and see the agent correct it, without touching the host."""

    def __init__(self, root: Root) -> None:
        self.file = root("/run/pifleet/clock-offset")

    def _offset(self) -> float:
        try:
            return float(self.file.read_text().strip())
        except (OSError, ValueError):
            return 0.0

    def now(self) -> float:
        return time.time() + self._offset()

    def set(self, value: float) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self.file.write_text(repr(value - time.time()) + "\n")


def clock_for(root: Root) -> Clock:
    return Clock() if root.is_real else RootedClock(root)


def synchronized(root: Root) -> bool:
    return root(TIMESYNC_FLAG).exists()
