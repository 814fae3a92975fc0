"""A deadline bounds the agent's whole request, not each read (issue 21, item 7).

A real TLS server on 127.0.0.1 answers every request one byte per second: each read gets a
byte well within a per-read socket timeout, so before the fix `token pin --timeout 2` (and the
device agent's fetch of /cacerts, and `token check`) hung for the whole drip (60 s here).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.testserver.ca import ServerCA, key_pem
from firstboot.server import ServerError, fetch_cacerts
from tests.conftest import pifleet

DRIP = b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n" + b"x" * 40  # about 80 s at 1 byte/s


class DripServer:
    """HTTPS on 127.0.0.1 that sends DRIP one byte a second to every request it gets."""

    def __init__(self, directory: Path) -> None:
        ca = ServerCA(directory, "single")
        chain, key = ca.serving_chain(("127.0.0.1",), True)
        (directory / "drip.crt").write_bytes(chain)
        (directory / "drip.key").write_bytes(key_pem(key))
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(directory / "drip.crt", directory / "drip.key")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[bytes] = []
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(raw,), daemon=True).start()

    def _drip(self, raw: socket.socket) -> None:
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                self.requests.append(conn.recv(65536))
                for i in range(len(DRIP)):
                    if self.stop.wait(1.0):
                        return
                    conn.sendall(DRIP[i : i + 1])
        except OSError:
            return

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


@pytest.fixture
def drip(tmp_path: Path) -> Iterator[DripServer]:
    server = DripServer(tmp_path)
    yield server
    server.close()


def test_the_agents_fetch_ends_at_its_deadline(drip: DripServer) -> None:
    started = time.monotonic()
    with pytest.raises(ServerError) as caught:
        fetch_cacerts(drip.url, 2)
    elapsed = time.monotonic() - started
    assert caught.value.kind == "waiting"
    assert "no complete answer within 2 s" in str(caught.value)
    assert elapsed < 10, f"the 2 s deadline took {elapsed:.1f} s (a per-read timeout)"


@pytest.mark.parametrize("command", ["pin", "check"])
def test_token_commands_end_at_their_deadline(
    drip: DripServer, tmp_path: Path, command: str
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("K10" + "ab" * 32 + "::node:drip-secret-password\n")
    token_file.chmod(0o600)
    if command == "pin":
        args = ["token", "pin", drip.url, "-o", str(tmp_path / "out"), "--yes"]
    else:
        args = ["token", "check", "--server", drip.url]
    started = time.monotonic()
    try:
        result = pifleet(
            *args, "--token-file", str(token_file), "--timeout", "2", cwd=tmp_path, timeout=40
        )
    except subprocess.TimeoutExpired:
        pytest.fail("`token " + command + " --timeout 2` still ran after 40 s")
    elapsed = time.monotonic() - started
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 1, output
    assert "no complete answer within 2 s" in output and len(output.splitlines()) == 1
    assert "drip-secret-password" not in output
    assert elapsed < 20, f"the 2 s deadline took {elapsed:.1f} s"
