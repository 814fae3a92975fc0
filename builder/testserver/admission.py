"""Admission control of the K3s test server, as K3s and the kube-apiserver do it: at most
`limit` requests in flight; one more is refused at once with 429 and `Retry-After`
(k8s apiserver/pkg/server/filters/maxinflight.go:WithMaxInFlightLimit, which K3s wraps as
pkg/server/auth.MaxInFlight on its agent routes, and which the kube-apiserver runs under
--max-requests-inflight). An admitted request holds its slot for `service_time` seconds
before it is answered, so a storm really saturates the server.

Simplification, said where it is used (rules.py): K3s keeps two pools (20 read-only, 10
mutating); here there is one pool of `limit` for both.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class AdmissionStats:
    limit: int
    peak: int  # the most requests ever in flight at once
    admitted: int
    refused: int  # answered 429
    busy_seconds: float  # slot-seconds spent serving admitted requests


class Admission:
    """A counter of in-flight requests; `limit` 0 admits everything (and still counts)."""

    def __init__(self, limit: int = 0, service_time: float = 0.0, retry_after: int = 1) -> None:
        if limit < 0 or service_time < 0 or retry_after < 0:
            raise ValueError("max in-flight, service time and Retry-After must be >= 0")
        self.limit = limit
        self.service_time = service_time
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._inflight = 0
        self._peak = 0
        self._admitted = 0
        self._refused = 0
        self._busy = 0.0

    def enter(self) -> bool:
        """Take a slot (True), or count a refusal (False) when all `limit` are taken."""
        with self._lock:
            if self.limit and self._inflight >= self.limit:
                self._refused += 1
                return False
            self._inflight += 1
            self._admitted += 1
            self._peak = max(self._peak, self._inflight)
            return True

    def serve(self) -> float:
        """The service time, spent holding the slot; the monotonic time it started."""
        start = time.monotonic()
        if self.service_time:
            time.sleep(self.service_time)
        return start

    def leave(self, started: float) -> None:
        with self._lock:
            self._inflight -= 1
            self._busy += time.monotonic() - started

    @property
    def inflight(self) -> int:
        with self._lock:
            return self._inflight

    def stats(self) -> AdmissionStats:
        with self._lock:
            return AdmissionStats(self.limit, self._peak, self._admitted, self._refused, self._busy)

    def reset(self) -> None:
        """Zero the figures (between two benchmark runs on one server)."""
        with self._lock:
            self._peak = self._inflight
            self._admitted = self._refused = 0
            self._busy = 0.0
