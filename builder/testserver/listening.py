"""What every pifleet test server shares: its listening socket's lifecycle and its addresses
(the K3s one in server.py, the kubeadm one in kubeadm.py)."""

from __future__ import annotations

import tempfile
from http.server import ThreadingHTTPServer
from typing import TypeVar

GUEST_HOST = "10.0.2.2"  # the host, as QEMU's user-mode network shows it to the guest


Server = TypeVar("Server", bound="Listening")


class Listening:
    """with / stop / set_down / port / url / guest_url over `_httpd`, `_port`, `host`,
    `start()` and `_tmp` (a state directory made for it, removed at the end)."""

    host: str
    _port: int
    _httpd: ThreadingHTTPServer | None
    _tmp: tempfile.TemporaryDirectory[str] | None

    def start(self) -> None:
        raise NotImplementedError

    def __enter__(self: Server) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def set_down(self, down: bool) -> None:
        """Unreachable (nothing listens on the port) or back, on the same port."""
        if down:
            self.stop()
        elif self._httpd is None:
            self.start()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self._port}"

    @property
    def guest_url(self) -> str:
        return f"https://{GUEST_HOST}:{self._port}"
