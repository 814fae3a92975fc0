"""An overall deadline for a whole network call, not one per read.

A socket timeout bounds each read: a server that sends one byte a second never trips it, and
a download, a status line or a TLS handshake then never ends. Under `Deadline(seconds)`, every
connection urllib3 opens or reuses in this thread (requests and the Kubernetes client both use
urllib3) is registered, and when the time is up a timer shuts those sockets down: whatever
read was blocked ends at once, and `Deadline` turns the failure into one line (BuildError,
exit 1) naming what did not finish in time.

Use: `track(pool_manager)` once on each urllib3 PoolManager (or `TrackedAdapter` for a
requests Session), then `with Deadline(30, "status: https://k3s:6443"): ...`.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from types import TracebackType
from typing import Any

from requests.adapters import HTTPAdapter

from builder.util.errors import BuildError, UserError

_current = threading.local()


class DeadlineExceeded(BuildError):
    """The whole call took longer than its deadline."""


class Deadline:
    """The end of one network call; `what` names it in the error."""

    def __init__(self, seconds: float, what: str, setting: str = "") -> None:
        self.seconds = seconds
        self.what = what
        self.setting = setting  # where the user can change the time, for the message
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._outer: Deadline | None = None

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def timeout(self, per_read: float) -> float:
        """A per-operation timeout that never reaches past the deadline."""
        return max(0.001, min(per_read, self.remaining()))

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.remaining()))
        self.check()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if sock not in self._sockets:
                self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def error(self) -> DeadlineExceeded:
        how = f" (raise {self.setting} to allow more)" if self.setting else ""
        return DeadlineExceeded(f"{self.what}: not done within {self.seconds:g} s{how}")

    def check(self) -> None:
        """Raise the one-line error once the time is up."""
        if self.expired or time.monotonic() >= self.end:
            self.expired = True
            raise self.error()

    def __enter__(self) -> Deadline:
        self._outer = getattr(_current, "deadline", None)
        _current.deadline = self
        self._timer.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._timer.cancel()
        _current.deadline = self._outer
        if kind is not None and not issubclass(kind, Exception):
            return  # Ctrl-C and SIGTERM go on as they are
        if self.expired and not isinstance(exc, DeadlineExceeded):
            # whatever the shut socket raised (or a body cut short): the reason is the deadline
            raise self.error() from None


def seconds(text: str, setting: str) -> float:
    """A duration the user gave (an option or an environment variable): finite and > 0."""
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{setting}: {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{setting}: {text!r} must be a number of seconds above 0")
    return value


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _watch(sock: Any) -> None:
    deadline: Deadline | None = getattr(_current, "deadline", None)
    if deadline is not None and isinstance(sock, socket.socket):
        deadline.watch(sock)


_CONNECTIONS: dict[type, type] = {}
_POOLS: dict[type, type] = {}


def _tracked_connection(base: type) -> type:
    if base not in _CONNECTIONS:

        class Tracked(base):  # type: ignore[misc]
            def _new_conn(self) -> Any:
                sock = super()._new_conn()
                _watch(sock)
                return sock

            def request(self, *args: Any, **kwargs: Any) -> Any:
                _watch(self.sock)  # a kept-alive connection, opened under another deadline
                return super().request(*args, **kwargs)

        _CONNECTIONS[base] = Tracked
    return _CONNECTIONS[base]


def _tracked_pool(base: Any) -> type:
    if base not in _POOLS:
        _POOLS[base] = type(
            "Tracked" + base.__name__,
            (base,),
            {"ConnectionCls": _tracked_connection(base.ConnectionCls)},
        )
    return _POOLS[base]


def track(pool_manager: Any) -> Any:
    """`pool_manager` (a urllib3 PoolManager or ProxyManager), its connections under Deadline."""
    classes = pool_manager.pool_classes_by_scheme
    if not getattr(pool_manager, "_pifleet_tracked", False):
        pool_manager.pool_classes_by_scheme = {k: _tracked_pool(v) for k, v in classes.items()}
        pool_manager._pifleet_tracked = True
    return pool_manager


class TrackedAdapter(HTTPAdapter):
    """A requests adapter whose connections (direct or through a proxy) obey Deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        track(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        return track(super().proxy_manager_for(proxy, **proxy_kwargs))
