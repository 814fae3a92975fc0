"""Deadlines bound the whole request: a server on 127.0.0.1 that sends one byte a second never
trips a per-read timeout, yet downloads (`pifleet fetch`: a file, a checksum file, a channel
redirect) and `pifleet status` end at their deadline, in one line, exit 1 (issue 21, item 7)."""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import fleet_yaml, pifleet

DRIP_MAX = 40  # bytes one connection drips at most: every server thread ends by itself
HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"


@dataclass
class DripServer:
    """Answers every request one byte a second: from the status line (`headers=False`) or,
    after prompt headers, in the body. Logs each request line it receives."""

    headers: bool = False
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 65536:
                    chunk = self.request.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                server.requests.append(request.split(b"\r\n", 1)[0].decode())
                body = b'{"kind": "NodeList", "items": []}' + b" " * 100
                answer = (HEADERS + body) if server.headers else HEADERS
                start = len(HEADERS) if server.headers else 0
                if server.headers:
                    self.request.sendall(HEADERS)
                for i in range(start, start + DRIP_MAX):
                    if server.stop.wait(1.0):
                        return
                    try:
                        self.request.sendall(answer[i : i + 1] or b" ")
                    except OSError:
                        return  # the client gave up, as it should

        self.stop = threading.Event()
        self.tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.tcp.daemon_threads = True
        self.thread = threading.Thread(target=self.tcp.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.tcp.server_address[1]}"

    def __enter__(self) -> DripServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.tcp.shutdown()
        self.tcp.server_close()


@pytest.fixture(params=[False, True], ids=["drip-headers", "drip-body"])
def drip(request: pytest.FixtureRequest) -> Iterator[DripServer]:
    with DripServer(headers=request.param) as server:
        yield server


def ends_in_time(done_in: float, deadline: float) -> None:
    # about the deadline: interpreter start-up and the config's load come on top
    assert deadline - 0.2 <= done_in < deadline + 3.5, done_in


def one_line_exit_1(done: object, *needles: str) -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)  # type: ignore[attr-defined]
    stderr: str = done.stderr  # type: ignore[attr-defined]
    assert stderr.count("\n") == 1 and "internal error" not in stderr, stderr
    for needle in needles:
        assert needle in stderr, stderr


K3S_VERSION = "k3s: {version: v1.33.5+k3s1, release_url: %s}"
CASES = {
    # what is fetched: (base section, k3s section)
    "base image": ("base: {url: %s/base.img.xz, sha256: " + "ab" * 32 + "}", None),
    "k3s checksum file": (None, K3S_VERSION),
    "k3s channel redirect": (None, "k3s: {channel: stable, channel_url: %s/channels}"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fetch_ends_at_its_deadline(case: str, drip: DripServer, fleet_dir: Path) -> None:
    if drip.headers and case == "k3s channel redirect":
        pytest.skip("a HEAD request reads no body: only its status line can drip")
    base, k3s = CASES[case]
    sections = {"base": base % drip.url} if base else {"k3s": (k3s or "") % drip.url}
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(**sections))
    env = {"PIFLEET_FETCH_DEADLINE": "2", "PIFLEET_CACHE": str(fleet_dir / "cache")}
    start = time.monotonic()
    done = pifleet("fetch", "fleet.yaml", cwd=fleet_dir, env=env, timeout=60)
    ends_in_time(time.monotonic() - start, 2)
    one_line_exit_1(done, drip.url, "not done within 2 s", "PIFLEET_FETCH_DEADLINE")
    assert drip.requests, "the server saw no request"


@pytest.mark.parametrize("value", ["nan", "-1", "0", "inf", "soon", ""])
def test_fetch_deadline_setting_is_checked(value: str, fleet_dir: Path) -> None:
    base = "base: {url: http://127.0.0.1:9/base.img.xz, sha256: " + "ab" * 32 + "}"
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(base=base))
    env = {"PIFLEET_FETCH_DEADLINE": value, "PIFLEET_CACHE": str(fleet_dir / "cache")}
    done = pifleet("fetch", "fleet.yaml", cwd=fleet_dir, env=env, timeout=60)
    if value == "":  # unset: the default, and port 9 refuses at once
        assert done.returncode == 1 and "refused" in done.stderr, done.stderr
        return
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "PIFLEET_FETCH_DEADLINE" in done.stderr


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_fetch_attempts_setting_is_checked(value: str, fleet_dir: Path) -> None:
    base = "base: {url: http://127.0.0.1:9/base.img.xz, sha256: " + "ab" * 32 + "}"
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(base=base))
    env = {"PIFLEET_FETCH_ATTEMPTS": value, "PIFLEET_CACHE": str(fleet_dir / "cache")}
    done = pifleet("fetch", "fleet.yaml", cwd=fleet_dir, env=env, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "PIFLEET_FETCH_ATTEMPTS" in done.stderr and "internal error" not in done.stderr


def kubeconfig_for(url: str, path: Path) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: drip\n"
        f"clusters:\n- name: drip\n  cluster: {{server: '{url}'}}\n"
        "users:\n- name: drip\n  user: {token: not-a-secret}\n"
        "contexts:\n- name: drip\n  context: {cluster: drip, user: drip}\n"
    )
    return path


def test_status_ends_at_its_deadline(drip: DripServer, tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(fleet_yaml(devices="devices:\n  - hostname: edge-001\n"))
    kubeconfig = kubeconfig_for(drip.url, tmp_path / "kubeconfig")
    start = time.monotonic()
    done = pifleet(
        "status", "fleet.yaml", "--kubeconfig", str(kubeconfig), "--timeout", "2",
        cwd=tmp_path, timeout=60,
    )  # fmt: skip
    ends_in_time(time.monotonic() - start, 2)
    one_line_exit_1(done, "not done within 2 s", "--timeout", drip.url)
    assert any("/api/v1/nodes" in r for r in drip.requests), drip.requests


def test_a_deadline_in_process_shuts_the_socket_itself() -> None:
    """The mechanism, without a CLI around it: a read blocked on a dripping server ends at
    the deadline, and the error is the deadline's, not the broken connection's."""
    from builder.sources.fetch import session
    from builder.util.deadline import Deadline, DeadlineExceeded

    with DripServer(headers=True) as server:
        start = time.monotonic()
        with (
            pytest.raises(DeadlineExceeded, match=r"not done within 1\.5 s"),
            Deadline(1.5, "drip"),
        ):
            response = session().get(server.url, stream=True, timeout=30)
            response.raw.read(100000)
        assert time.monotonic() - start < 2.5
