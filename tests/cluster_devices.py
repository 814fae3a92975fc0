"""Fake device roots (tests/agent_helpers.py) for the servers and agents of a cluster pifleet
creates: servers carry the CA files and tokens as the builder puts them, and the first
server's K3s stand-in (`k3s server`) listens on a free port of 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from builder.testserver.server import K3sTestServer
from firstboot import joinconfig
from tests.agent_helpers import make_device, stop_services, write

TLS = "var/lib/rancher/k3s/server/tls"
SANS = ["edge-srv-1", "edge-srv-2", "edge-srv-3"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def device(
    roots: list[Path], base: Path, name: str, files: dict[str, bytes], port: int, **seed: object
) -> Path:
    """A device root for `name`; servers carry the CA files, tokens as the builder puts them."""
    root = base / name
    roots.append(root)
    url = f"https://127.0.0.1:{port}"
    join = joinconfig.JoinConfig(
        server=url, backoff_cap=0.3, clock_sync_timeout=1.0, recheck_interval=0.0,
        start_timeout=60.0, hostname_pattern="edge-{serial}",
    )  # fmt: skip
    server = seed.get("role") == "server"
    token = files["token" if server else "agent-token"].decode().strip()
    make_device(root, cast(K3sTestServer, None), token, join=join)
    info = joinconfig.DeviceConfig(hostname=name, **seed)  # type: ignore[arg-type]
    write(root / "boot/firmware/pifleet/device.json", joinconfig.dump_device_config(info))
    if server:
        for rel, data in files.items():
            if rel.startswith("tls/"):
                secret = rel.endswith(".key")
                write(root / TLS / rel[4:], data, 0o600 if secret else 0o644)
        write(root / "etc/rancher/k3s/agent-token", files["agent-token"], 0o600)
    return root


def standin_env(port: int) -> dict[str, str]:
    """Where the device's K3s stand-in (`k3s server`) listens."""
    return {"K3S_STANDIN_BIND": "127.0.0.1", "K3S_STANDIN_PORT": str(port)}


def first_server(
    roots: list[Path], base: Path, files: dict[str, bytes]
) -> tuple[Path, int, dict[str, str]]:
    """edge-srv-1, the server that initialises: its root, its port and its stand-in's env."""
    port = free_port()
    root = device(roots, base, "edge-srv-1", files, port,
                  role="server", cluster_init=True, tls_san=SANS)  # fmt: skip
    return root, port, standin_env(port)


def cluster_files() -> dict[str, bytes]:
    """A cluster as `pifleet cluster init` makes it: its CA files under tls/, the server token,
    the agent token and the CA hash, as `device()` takes them."""
    from builder.cluster.ca import generate
    from builder.cluster.cahash import k3s_ca_hash

    files = {f"tls/{f.path}": f.data for f in generate()}
    ca_hash = k3s_ca_hash(files["tls/server-ca.crt"])
    files["token"] = f"K10{ca_hash}::server:{'5e' * 16}\n".encode()
    files["agent-token"] = f"K10{ca_hash}::node:{'a9' * 16}\n".encode()
    files["hash"] = ca_hash.encode()
    return files


@pytest.fixture(scope="module")
def cluster() -> dict[str, bytes]:
    """`cluster_files()` once per module."""
    return cluster_files()


@pytest.fixture
def roots() -> Iterator[list[Path]]:
    """The device roots a test ran agents in; their services are stopped afterwards."""
    made: list[Path] = []
    yield made
    for root in made:
        stop_services(root)
