"""`pifleet status` of a kubeadm fleet, against the kubeadm test server's API with kubeadm's
admin.conf (a kubernetes-admin client certificate in kubeadm:cluster-admins), checked with the
real kubectl. The Nodes are registered and made Ready as a kubelet does it: its TLS bootstrap
with a bootstrap token, then its own client certificate (tests/test_kubeadm_server.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.config.fleet import load
from builder.config.labels import fleet_labels
from builder.testserver.kubeadm import KubeadmTestServer
from tests.conftest import fleet_yaml, pifleet
from tests.kubeadm_client import call, node_credentials
from tests.layouts import elf_for

PIN = "sha256:" + "7e" * 32
ELF = elf_for("arm64")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[KubeadmTestServer]:
    with KubeadmTestServer(state_dir=tmp_path / "server") as running:
        yield running


def kubeadm_fleet(where: Path, server: KubeadmTestServer) -> Path:
    cluster = (
        f"cluster:\n  kind: kubeadm\n  server: {server.endpoint}\n  token_file: token\n"
        f"  ca_cert_hashes: ['{PIN}']\n"
    )
    binaries = f"kubernetes: {{kubeadm: {ELF}, kubelet: {ELF}, kubectl: {ELF}}}"
    devices = "devices:\n  - {hostname: pi-01}\n  - {hostname: pi-02}"
    text = fleet_yaml(k3s="", cluster=cluster, kubernetes=binaries, devices=devices)
    (where / "fleet.yaml").write_text(text)
    (where / "token").write_text("abcdef.0123456789abcdef\n")
    (where / "token").chmod(0o600)
    return where / "fleet.yaml"


def kubelet(server: KubeadmTestServer, tmp: Path, node: str, labels: dict[str, str]) -> None:
    """A kubelet's registration: its TLS bootstrap, its Node, Ready in its status."""
    cert = node_credentials(server, tmp, node)
    body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": labels}}
    assert call(server, "POST", "/api/v1/nodes", body, cert=cert)[0] == 201
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True",
                                        "reason": "KubeletReady"}]}}  # fmt: skip
    assert call(server, "PATCH", f"/api/v1/nodes/{node}/status", ready, cert=cert)[0] == 200


def test_status_of_a_kubeadm_fleet_read_with_admin_conf(
    server: KubeadmTestServer, tmp_path: Path
) -> None:
    fleet = kubeadm_fleet(tmp_path, server)
    labels = dict(label.split("=", 1) for label in fleet_labels(load(fleet)))
    kubelet(server, tmp_path, "pi-01", labels)
    admin = server.admin_kubeconfig()
    assert admin.stat().st_mode & 0o777 == 0o600
    done = pifleet("status", "fleet.yaml", "--kubeconfig", str(admin), "--json", cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # pi-02 never joined
    states = {d["name"]: d["state"] for d in json.loads(done.stdout)["devices"]}
    assert states == {"pi-01": "Ready", "pi-02": "never seen"}
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl missing: tools/setup.sh installs kubernetes-client"
    seen = subprocess.run(
        [kubectl, "--kubeconfig", str(admin), "get", "nodes", "-o",
         'jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}'],
        capture_output=True, text=True, check=True, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    ).stdout  # fmt: skip
    assert [line.split() for line in seen.splitlines()] == [["pi-01", "True"]]


def test_a_node_certificate_is_not_admin_conf(server: KubeadmTestServer, tmp_path: Path) -> None:
    """Only the admin may list the Nodes: a kubelet's certificate reads its own Node only."""
    cert = node_credentials(server, tmp_path, "pi-01")
    status, answer = call(server, "GET", "/api/v1/nodes", cert=cert)
    assert status == 403 and "cannot read all nodes" in answer["message"]
