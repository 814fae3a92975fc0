"""K3s settings at build time (issue 24): what the kubelet and K3s refuse, refused or warned
about before a card is flashed, and the K3s settings real fleets need reaching config.yaml."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.config.fleet import load
from builder.testserver.server import K3sTestServer
from builder.util.errors import UserError
from tests.agent_helpers import FIXTURES
from tests.conftest import pifleet

SERVER = "https://k3s.example.net:6443"


def fleet(tmp_path: Path, cluster: str = "", devices: str = "", top: str = "") -> Path:
    """A fleet file: `cluster` and `devices` are more YAML lines (indented as they go)."""
    text = (
        f"name: f\n{top}cluster:\n  server: {SERVER}\n  token_env: TOK\n{cluster}"
        f"devices:\n  - hostname: pi-1\n{devices}"
    )
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return path


def refused(path: Path, one_line: bool = True) -> str:
    with pytest.raises(UserError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message or not one_line  # an inventory lists every bad row, a line each
    return message


# -- item 2: node labels the kubelet refuses ----------------------------------------------------

REFUSED = (
    "node-role.kubernetes.io/worker",
    "kubernetes.io/role",
    "app.kubernetes.io/name",
    "k8s.io/x",
    "foo.k8s.io/x",
    "node-restriction.kubernetes.io/x",
)
ALLOWED = (
    "node.kubernetes.io/role",
    "sub.node.kubernetes.io/x",
    "kubelet.kubernetes.io/x",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "kubernetes.io/hostname",
    "beta.kubernetes.io/arch",
    "node.kubernetes.io/instance-type",
    "example.com/role",
    "kubernetes.io.example.com/x",
    "role",
)


@pytest.mark.parametrize("key", REFUSED)
def test_a_reserved_fleet_label_is_refused_naming_it_and_the_alternative(
    tmp_path: Path, key: str
) -> None:
    message = refused(fleet(tmp_path, cluster=f"  node_labels: {{'{key}': 'a'}}\n"))
    assert f"cluster.node_labels.{key}:" in message and "node.kubernetes.io/" in message


def test_node_role_worker_suggests_the_node_role_label(tmp_path: Path) -> None:
    message = refused(fleet(tmp_path, devices="    labels: ['node-role.kubernetes.io/worker=']\n"))
    assert "devices[0].labels[0]" in message and "node.kubernetes.io/role=worker" in message


@pytest.mark.parametrize("key", ALLOWED)
def test_labels_the_kubelet_sets_are_accepted(tmp_path: Path, key: str) -> None:
    config = load(fleet(tmp_path, devices=f"    labels: {{'{key}': 'a'}}\n"))
    assert config.devices[0].labels == (f"{key}=a",)


def test_a_reserved_label_in_an_inventory_row_is_refused(tmp_path: Path) -> None:
    (tmp_path / "devices.csv").write_text("hostname,labels\npi-2,node-role.kubernetes.io/edge=x\n")
    message = refused(fleet(tmp_path, top="devices_file: devices.csv\n"), one_line=False)
    assert "devices.csv" in message and "node-role.kubernetes.io/edge" in message


def test_the_cli_exits_2_on_a_reserved_label(tmp_path: Path) -> None:
    path = fleet(tmp_path, cluster="  node_labels: {'node-role.kubernetes.io/worker': ''}\n")
    done = pifleet("build", str(path), cwd=tmp_path, env={"TOK": "x"})
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def standin_agent(
    server: K3sTestServer, root: Path, node: str, label: str
) -> subprocess.Popen[str]:
    (root / "etc/rancher/k3s").mkdir(parents=True)
    (root / "etc/rancher/k3s/token").write_text(server.mint_token("node") + "\n")
    (root / "etc/rancher/k3s/config.yaml").write_text(
        f'server: "{server.url}"\ntoken-file: "/etc/rancher/k3s/token"\nnode-name: "{node}"\n'
        f'node-label:\n  - "{label}"\n'
    )
    return subprocess.Popen(
        [sys.executable, str(FIXTURES / "k3s-standin"), "agent"],
        env={**os.environ, "K3S_STANDIN_ROOT": str(root), "K3S_STANDIN_PERIOD": "0.3"},
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_standin_exits_as_the_kubelet_does_on_a_reserved_label(tmp_path: Path) -> None:
    with K3sTestServer(state_dir=tmp_path / "server") as server:
        refused_agent = standin_agent(
            server, tmp_path / "a", "pi-a", "node-role.kubernetes.io/worker="
        )
        allowed_agent = standin_agent(
            server, tmp_path / "b", "pi-b", "topology.kubernetes.io/zone=z"
        )
        try:
            deadline = time.monotonic() + 20
            while refused_agent.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            while "pi-b" not in server.registered_nodes() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            for agent in (refused_agent, allowed_agent):
                agent.kill()
            _, err = refused_agent.communicate()
            allowed_agent.communicate()
        assert refused_agent.returncode == 1, err
        assert "kubelet exited: failed to validate kubelet flags: unknown 'kubernetes.io' or" in err
        assert "[node-role.kubernetes.io/worker]" in err
        assert "pi-a" not in server.registered_nodes()
        assert "pi-b" in server.registered_nodes()
