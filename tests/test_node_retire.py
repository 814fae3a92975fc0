"""`pifleet node retire` (issue 24, item 3) against the K3s test server on 127.0.0.1, and the
K3s stand-in's etcd rule that makes it needed: a re-flashed server whose name is still an etcd
member is refused ("duplicate node name found"), and joins once the Node is retired.

The order of the steps is read from the requests the test server recorded; what it holds
afterwards (Nodes, pods, node passwords, etcd members) from its own records; and the real
`kubectl`, where it is installed, reads the cluster as any user would."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.cluster.ca import generate
from builder.testserver.kubeobjects import Pod
from builder.testserver.server import K3sTestServer, free_port
from tests.conftest import REPO

STANDIN = REPO / "tests/fixtures/k3s-standin"
DUPLICATE = (
    "etcd cluster join failed: duplicate node name found, please use a unique name for this node"
)
NODE = "edge-srv-2"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[K3sTestServer]:
    with K3sTestServer(state_dir=tmp_path / "k3s", etcd=True) as s:
        yield s


def retire(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    """The real CLI, its stdin not a terminal unless the test gives one."""
    return subprocess.run(
        [sys.executable, "-m", "builder", "node", "retire", *args],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def one_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pifleet: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def writes(server: K3sTestServer) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in server.requests if r.method != "GET" or "pods?" in r.path]


def a_server_node(server: K3sTestServer) -> str:
    """edge-srv-2 as it is before its card is re-flashed: an etcd member, its Node, its node
    password, a ReplicaSet pod, a DaemonSet pod and a mirror pod; a pod on another node."""
    member = server.add_etcd_member(NODE)
    server.preregister(NODE, "old-node-password")
    for pod in (
        Pod("default", "web-1", NODE, owner="ReplicaSet"),
        Pod("kube-system", "svclb-1", NODE, owner="DaemonSet"),
        Pod("kube-system", "kube-vip-edge-srv-2", NODE, mirror=True),
        Pod("default", "web-2", "edge-srv-1", owner="ReplicaSet"),
    ):
        server.kube_objects.add_pod(pod)
    return member


def test_retire_cordons_drains_then_deletes_the_node_and_its_password(
    server: K3sTestServer,
) -> None:
    member = a_server_node(server)
    assert server.etcd_members() == {member: "https://127.0.0.1:2380"}
    done = retire(NODE, "--kubeconfig", str(server.kubeconfig), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert writes(server) == [
        ("PATCH", f"/api/v1/nodes/{NODE}"),
        ("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}"),
        ("POST", "/api/v1/namespaces/default/pods/web-1/eviction"),
        ("DELETE", f"/api/v1/nodes/{NODE}"),
        ("DELETE", f"/api/v1/namespaces/kube-system/secrets/{NODE}.node-password.k3s"),
    ]
    assert NODE not in server.registered_nodes()
    assert server.node_password_hash(NODE) is None
    assert server.etcd_members() == {}  # K3s's member controller removed it with the Node
    left = {name for _ns, name in server.kube_objects.pods}
    assert left == {"svclb-1", "kube-vip-edge-srv-2", "web-2"}
    out = done.stdout.splitlines()
    assert out[0] == f"retiring {NODE} from the cluster at {server.url}"
    assert [line.split(":")[0] for line in out[1:-1]] == [
        f"cordoned {NODE}", "evicting pod default/web-1", f"drained {NODE}",
        f"deleted Node {NODE}", f"deleted Secret kube-system/{NODE}.node-password.k3s",
    ]  # fmt: skip
    assert "1 pod(s) evicted; left 1 DaemonSet and 1 mirror pod(s)" in done.stdout
    assert out[-1].startswith(f"{NODE} is retired")
    assert "old-node-password" not in done.stdout + done.stderr
    kubectl = shutil.which("kubectl")
    if kubectl:  # the cluster as kubectl sees it
        seen = subprocess.run([kubectl, "--kubeconfig", str(server.kubeconfig), "get", "node",
                               NODE], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert seen.returncode == 1
        assert f'Error from server (NotFound): nodes "{NODE}" not found' in seen.stderr


def test_refusals_are_one_line_and_change_nothing(server: K3sTestServer, tmp_path: Path) -> None:
    a_server_node(server)
    kubeconfig = str(server.kubeconfig)
    line = one_line(retire(NODE, "--kubeconfig", kubeconfig), 2)
    assert "not on a terminal: give --yes" in line
    assert "not a node name" in one_line(retire("Edge_Srv", "--kubeconfig", kubeconfig), 2)
    missing = tmp_path / "nowhere.yaml"
    assert str(missing) in one_line(retire(NODE, "--kubeconfig", str(missing), "--yes"), 2)
    line = one_line(retire("edge-srv-9", "--kubeconfig", kubeconfig, "--yes"), 1)
    assert "no node edge-srv-9" in line and "not found" in line
    assert writes(server) == []
    assert NODE in server.registered_nodes() and server.node_password_hash(NODE)
    server.set_down(True)
    line = one_line(retire(NODE, "--kubeconfig", kubeconfig, "--yes", "--timeout", "5"), 1)
    assert "cannot reach the cluster" in line


def test_a_kubelet_kubeconfig_is_forbidden(server: K3sTestServer, tmp_path: Path) -> None:
    """A kubeconfig with a node's own client certificate: the apiserver's 403, in one line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from builder.testserver.ca import key_pem, name

    a_server_node(server)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = server.client_ca.issue(name("system:node:edge-srv-1"), key.public_key(),
                                  ExtendedKeyUsageOID.CLIENT_AUTH)  # fmt: skip
    text = server.kubeconfig.read_text().split("users:")[0]
    pem = cert.public_bytes(serialization.Encoding.PEM)
    b64 = {k: __import__("base64").b64encode(v).decode() for k, v in
           {"crt": pem, "key": key_pem(key)}.items()}  # fmt: skip
    text += ("users:\n- name: default\n  user:\n"
             f"    client-certificate-data: {b64['crt']}\n    client-key-data: {b64['key']}\n")  # fmt: skip
    kubeconfig = tmp_path / "kubelet.yaml"
    kubeconfig.write_text(text)
    line = one_line(retire(NODE, "--kubeconfig", str(kubeconfig), "--yes"), 1)
    assert "403" in line and 'User "system:node:edge-srv-1" cannot get resource "nodes"' in line


def test_a_disruption_budget_holds_the_drain_until_the_timeout(server: K3sTestServer) -> None:
    a_server_node(server)
    server.kube_objects.add_pod(Pod("default", "db-0", NODE, owner="StatefulSet", protected=True))
    done = retire(NODE, "--kubeconfig", str(server.kubeconfig), "--yes", "--timeout", "2")
    line = one_line(done, 1)
    assert "not done within 2 s (raise --timeout" in line
    assert "violate the pod's disruption budget" in done.stdout
    assert NODE in server.registered_nodes()  # never deleted while a pod could not leave


def test_on_a_terminal_it_asks_first(server: K3sTestServer) -> None:
    a_server_node(server)
    primary, secondary = pty.openpty()
    try:
        os.write(primary, b"n\n")
        asked = retire(NODE, "--kubeconfig", str(server.kubeconfig), stdin=secondary)
    finally:
        os.close(primary)
        os.close(secondary)
    assert asked.returncode == 1, asked.stdout + asked.stderr
    assert f"Retire {NODE} from the cluster at {server.url}" in asked.stdout
    assert "nothing changed" in asked.stdout and writes(server) == []


def a_reflashed_server(root: Path, server: K3sTestServer) -> Path:
    """edge-srv-2's root after its card was re-flashed: no etcd data, a config that joins."""
    config = {"server": server.url, "token-file": "/etc/rancher/k3s/join-token", "node-name": NODE}
    etc = root / "etc/rancher/k3s"
    etc.mkdir(parents=True)
    (etc / "config.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()))
    (etc / "join-token").write_text(server.mint_token("server") + "\n")
    tls = root / "var/lib/rancher/k3s/server/tls"
    for made in generate():
        (tls / made.path).parent.mkdir(parents=True, exist_ok=True)
        (tls / made.path).write_bytes(made.data)
    return root


def k3s_server(root: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "K3S_STANDIN_ROOT": str(root), "K3S_STANDIN_BIND": "127.0.0.1",
           "K3S_STANDIN_PORT": str(free_port()), "K3S_STANDIN_PERIOD": "0.2"}  # fmt: skip
    return subprocess.Popen([sys.executable, str(STANDIN), "server"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_a_reflashed_server_is_refused_until_it_is_retired(
    server: K3sTestServer, tmp_path: Path
) -> None:
    old = a_server_node(server)
    root = a_reflashed_server(tmp_path / "edge-srv-2", server)
    db = root / "var/lib/rancher/k3s/server/db/etcd"
    refused = k3s_server(root)
    try:
        _out, err = refused.communicate(timeout=30)
    finally:
        refused.kill()  # a stand-in that joins serves until stopped
    assert refused.returncode == 1, err[-2000:]
    assert f'level=fatal msg="{DUPLICATE}"' in err
    assert not (db / "name").exists() and not (db / "member").exists()
    assert server.etcd_members() == {old: "https://127.0.0.1:2380"}

    assert retire(NODE, "--kubeconfig", str(server.kubeconfig), "--yes").returncode == 0
    joined = k3s_server(root)
    try:
        deadline = time.monotonic() + 60
        while not (db / "standin-member.json").exists() and joined.poll() is None:
            assert time.monotonic() < deadline, "the re-flashed server never joined"
            time.sleep(0.1)
    finally:
        joined.terminate()
        _out, err = joined.communicate(timeout=30)
    assert DUPLICATE not in err, err[-2000:]
    (new,) = server.etcd_members()
    assert new != old and new.startswith(f"{NODE}-") and (db / "name").read_text() == new
    assert (db / "name").stat().st_mode & 0o777 == 0o600
    assert NODE in server.registered_nodes()  # its Node again, with the new member's name
