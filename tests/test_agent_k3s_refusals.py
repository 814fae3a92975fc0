"""The agent against what real K3s refuses on the device (issue 24): the node password file a
power cut emptied, server names only NSS resolves (.local), pod DNS falling back to 8.8.8.8,
a server clock before its CA, a server's own Node, a second cluster-init, etcd's duplicate
member name, and air-gap images still importing. Real processes on fake device roots
(tests/agent_helpers.py) against the strict test server and the K3s stand-in."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.testserver.server import K3sTestServer
from tests.agent_helpers import DEFAULT_NODE, make_device, run_agent, stop_services, write

PASSWORD = "etc/rancher/node/password"


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "device"
    yield root
    stop_services(root)


# -- item 7: the node password file ------------------------------------------------------------


def test_an_emptied_node_password_file_is_replaced_before_k3s_starts(
    tmp_path: Path, device: Path
) -> None:
    """K3s reads an existing empty file and sends an empty password, which the server refuses
    (400 "node password not set") on every retry; the agent writes a good one first."""
    with K3sTestServer(state_dir=tmp_path / "s") as server:
        make_device(device, server, server.mint_token(), start_timeout=8.0)
        write(device / PASSWORD, b"", 0o600)  # K3s created it; the power went before writeback
        proc = run_agent(device)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "was empty or damaged" in proc.stderr
        data = (device / PASSWORD).read_bytes()
        assert re.fullmatch(rb"[0-9a-f]{32}\n", data)
        assert (device / PASSWORD).stat().st_mode & 0o777 == 0o600
        assert data.decode() not in proc.stderr
        assert server.node_password_hash(DEFAULT_NODE) == hashlib.sha256(data.strip()).hexdigest()
        assert server.registered_nodes() == [DEFAULT_NODE]


def test_the_agent_creates_the_node_password_and_keeps_a_good_one(
    tmp_path: Path, device: Path
) -> None:
    with K3sTestServer(state_dir=tmp_path / "s") as server:
        make_device(device, server, server.mint_token())
        proc = run_agent(device)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "node password created in /etc/rancher/node/password" in proc.stderr
        first = (device / PASSWORD).read_bytes()
        assert re.fullmatch(rb"[0-9a-f]{32}\n", first)
    again = tmp_path / "again"
    try:
        with K3sTestServer(state_dir=tmp_path / "s2") as server:
            make_device(again, server, server.mint_token())
            write(again / PASSWORD, b"restored-from-out-devices\n", 0o644)
            proc = run_agent(again)
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert (again / PASSWORD).read_bytes() == b"restored-from-out-devices\n"
            assert (again / PASSWORD).stat().st_mode & 0o777 == 0o600
            assert "node password" not in proc.stderr
            want = hashlib.sha256(b"restored-from-out-devices").hexdigest()
            assert server.node_password_hash(DEFAULT_NODE) == want
    finally:
        stop_services(again)
