"""The first-boot agent as a kubeadm worker (join.json `kind: kubeadm`,
firstboot/kubeadm_states.py), run as a real process on a fake device root against the
kubeadm test server on 127.0.0.1, which logs every request it receives.

Its verify is kubeadm's token discovery; its configure writes the JoinConfiguration, 0600.
An attacker who forged cluster-info, or a wrong token or pin, gets nothing after the
anonymous cluster-info read: no JoinConfiguration is written and no request carries the token.
`kubeadm join` itself is not run by this build of the agent (a verdict at start).
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.testserver.kubeadm import KubeadmTestServer
from firstboot import joinconfig
from firstboot.kubeadm_states import CONFIG_PATH
from firstboot.state import ORDER
from tests.agent_helpers import make_device, run_agent, states_seen, write
from tests.layouts import elf_for

CLUSTER_INFO = "/api/v1/namespaces/kube-public/configmaps/cluster-info"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[KubeadmTestServer]:
    with KubeadmTestServer(state_dir=tmp_path / "server") as running:
        yield running


def kubeadm_device(root: Path, server: KubeadmTestServer, token: str, pins: list[str]) -> Path:
    join = joinconfig.JoinConfig(
        server=server.url, boot_dir="/boot/firmware", hostname_pattern="edge-{serial}",
        node_labels=["node.kubernetes.io/site=lab"], node_taints=["edge=true:NoSchedule"],
        kubelet_args=["max-pods=60"], build_time=1_700_000_000, backoff_cap=0.3,
        clock_sync_timeout=1.0, recheck_interval=0.0, kind="kubeadm", ca_cert_hashes=pins,
    )  # fmt: skip
    make_device(root, server, token, join=join)  # type: ignore[arg-type]
    write(root / "usr/bin/kubeadm", elf_for("arm64").read_bytes(), 0o755)
    return root


def test_a_kubeadm_worker_discovers_the_cluster_and_writes_its_join_configuration(
    server: KubeadmTestServer, tmp_path: Path
) -> None:
    token = server.mint_token()
    root = kubeadm_device(tmp_path / "device", server, token, [server.ca_hash])
    done = run_agent(root)
    verify_to_start = list(ORDER[ORDER.index("verify") : ORDER.index("start") + 1])
    assert states_seen(done.stderr)[-3:] == verify_to_start, done.stderr
    assert "cluster CA pinned (sha256:" in done.stderr and "token accepted" in done.stderr
    assert "kubeadm join: not in this build" in done.stderr
    written = root / CONFIG_PATH.lstrip("/")
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    config = json.loads(written.read_bytes())
    assert config["discovery"]["bootstrapToken"] == {
        "token": token, "apiServerEndpoint": server.endpoint, "caCertHashes": [server.ca_hash],
    }  # fmt: skip
    registration = config["nodeRegistration"]
    assert registration["name"] == "edge-10000000abcdef01"
    assert registration["taints"] == [{"key": "edge", "value": "true", "effect": "NoSchedule"}]
    assert {"name": "node-labels", "value": "node.kubernetes.io/site=lab"} in registration[
        "kubeletExtraArgs"
    ]
    assert token.split(".")[1] not in done.stderr + done.stdout, "the token secret was printed"
    assert (root / "var/lib/pifleet/server-ca.pem").read_bytes() == server.ca_pem


@pytest.mark.parametrize("attack", ["wrong pin", "wrong token", "forged cluster-info"])
def test_an_attacker_gets_nothing_after_the_anonymous_read(
    server: KubeadmTestServer, tmp_path: Path, attack: str
) -> None:
    token = server.mint_token()
    pins = [server.ca_hash]
    if attack == "wrong pin":
        pins = ["sha256:" + "0" * 64]
    elif attack == "wrong token":
        token = server.wrong_token(token)
    else:
        server.forge()  # knows the token: the JWS verifies, the CA is the forger's
    root = kubeadm_device(tmp_path / "device", server, token, pins)
    done = run_agent(root)
    assert done.returncode == 2, done.stderr
    assert states_seen(done.stderr)[-1] == "verify", done.stderr
    assert "failed state=verify" in done.stderr
    assert not (root / CONFIG_PATH.lstrip("/")).exists(), "a JoinConfiguration was written"
    sent = [(r.method, r.path, r.authorization) for r in server.requests]
    assert sent and all(r == ("GET", CLUSTER_INFO, False) for r in sent), sent
    assert token.split(".")[1] not in done.stderr + done.stdout


def test_a_kubeadm_worker_without_kubeadm_stops_before_the_network(
    server: KubeadmTestServer, tmp_path: Path
) -> None:
    root = kubeadm_device(tmp_path / "device", server, server.mint_token(), [server.ca_hash])
    (root / "usr/bin/kubeadm").unlink()
    done = run_agent(root)
    assert "the kubeadm binary /usr/bin/kubeadm is missing" in done.stderr
    assert server.requests == []
