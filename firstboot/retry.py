"""How the agent waits: jittered exponential backoff for waiting states, a jittered slow
re-check after a final verdict (so no device idles until a power cycle), and a lock so that
two agent instances never race on the state file."""

from __future__ import annotations

import fcntl
import os
import random
from typing import Callable, Optional

from firstboot.paths import Root

LOCK_FILE = "/run/pifleet/agent.lock"
# After a 429 the server is up and has said when to come back: the jitter window on top of
# its Retry-After stops growing here, so a throttled fleet keeps the server busy instead of
# idling it behind minute-long waits (bench/join_storm.py measures both ends).
THROTTLED_WINDOW = 15.0


class Terminal(Exception):
    """A final verdict: retrying soon would not help; re-checked at the slow cadence."""


class Backoff:
    """Exponential backoff with full jitter: a thousand devices do not retry in step.
    `at_least` (the server's Retry-After) comes first and the jittered backoff on top, so a
    throttled device never returns before the server asked and never in step with the
    others; the window then stops at THROTTLED_WINDOW. `jitter=False` only for the storm
    benchmark's contrast run."""

    def __init__(
        self,
        cap: float,
        sleep: Callable[[float], None],
        base: float = 1.0,
        jitter: bool = True,
    ) -> None:
        self.cap = cap
        self.sleep = sleep
        self.base = base
        self.jitter = jitter
        self.attempt = 0

    def delay(self, at_least: float = 0.0) -> float:
        """The next wait, counting this attempt."""
        window = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        if at_least > 0:
            window = min(window, THROTTLED_WINDOW)
        self.attempt += 1
        return max(at_least, 0.0) + (random.uniform(0, window) if self.jitter else window)

    def wait(self, at_least: Optional[float] = None) -> float:
        delay = self.delay(at_least or 0.0)
        self.sleep(delay)
        return delay


def recheck_delay(interval: float) -> float:
    """The slow re-check after a verdict: between half and all of `interval`, at random."""
    return random.uniform(interval / 2, interval)


class AgentLock:
    """An exclusive flock on LOCK_FILE, held for the agent's life (released by the kernel
    when the process dies, so a power cut or SIGKILL never leaves it stale)."""

    def __init__(self, root: Root) -> None:
        self.path = root(LOCK_FILE)
        self.fd: Optional[int] = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, (str(os.getpid()) + "\n").encode())
        self.fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
