"""What every pifleet test server shares: its listening socket's lifecycle and its addresses
(the K3s one in server.py, the kubeadm one in kubeadm.py)."""

from __future__ import annotations

from http.server import ThreadingHTTPServer

GUEST_HOST = "10.0.2.2"  # the host, as QEMU's user-mode network shows it to the guest


class Listening:
    """stop / set_down / port / url / guest_url over `_httpd`, `_port`, `host` and `start()`."""

    host: str
    _port: int
    _httpd: ThreadingHTTPServer | None

    def start(self) -> None:
        raise NotImplementedError

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
