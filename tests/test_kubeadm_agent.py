"""The first-boot agent as a kubeadm worker (join.json `kind: kubeadm`,
firstboot/kubeadm_states.py), run as a real process on a fake device root against the
kubeadm test server on 127.0.0.1, which logs every request it receives.

Its verify is kubeadm's token discovery; its configure writes the JoinConfiguration, 0600;
its start runs `kubeadm join --config` (tests/fixtures/kubeadm-standin plays kubeadm and the
kubelet's TLS bootstrap) and waits for its Node Ready through kubelet.conf. An attacker who
forged cluster-info, or a wrong token or pin, gets nothing after the anonymous cluster-info
read: no JoinConfiguration is written and no request carries the token.
"""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.testserver.kubeadm import KubeadmTestServer
from firstboot import joinconfig
from firstboot.kubeadm_states import CONFIG_PATH
from tests.agent_helpers import FIXTURES, make_device, run_agent, states_seen, write

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
    write(root / "usr/bin/kubeadm", (FIXTURES / "kubeadm-standin").read_bytes(), 0o755)
    write(root / "proc/sys/net/ipv4/ip_forward", b"1\n")
    write(root / "proc/swaps", b"Filename\tType\tSize\tUsed\tPriority\n")
    return root


def env(root: Path, **more: str) -> dict[str, str]:
    return {"KUBEADM_STANDIN_ROOT": str(root), **more}


def test_a_kubeadm_worker_joins_and_leaves_no_token(
    server: KubeadmTestServer, tmp_path: Path
) -> None:
    token = server.mint_token()
    root = kubeadm_device(tmp_path / "device", server, token, [server.ca_hash])
    seen: dict[str, object] = {}
    first = run_agent(root, env(root, PIFLEET_FAULT="kill-before:cleanup"))  # power cut
    assert "cluster CA pinned (sha256:" in first.stderr, first.stderr
    assert "kubeadm: This node has joined the cluster" in first.stderr
    assert "state=start running kubeadm join" in first.stderr and "K3s" not in first.stderr
    written = root / CONFIG_PATH.lstrip("/")
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    seen["config"] = json.loads(written.read_bytes())
    done = run_agent(root, env(root))
    assert done.returncode == 0, done.stderr
    assert "kubeadm: This node has joined the cluster" not in done.stderr, "joined twice"
    assert "Node edge-10000000abcdef01 is Ready" in done.stderr
    assert server.nodes() == ["edge-10000000abcdef01"]
    config = seen["config"]
    assert isinstance(config, dict)
    assert config["discovery"]["bootstrapToken"] == {
        "token": token, "apiServerEndpoint": server.endpoint, "caCertHashes": [server.ca_hash],
    }  # fmt: skip
    registration = config["nodeRegistration"]
    assert registration["name"] == "edge-10000000abcdef01"
    assert registration["taints"] == [{"key": "edge", "value": "true", "effect": "NoSchedule"}]
    assert {"name": "node-labels", "value": "node.kubernetes.io/site=lab"} in registration[
        "kubeletExtraArgs"
    ]
    for gone in (CONFIG_PATH, "/etc/pifleet/token", "/etc/kubernetes/bootstrap-kubelet.conf"):
        assert not (root / gone.lstrip("/")).exists(), f"{gone} is still on the device"
    secret = token.split(".")[1]
    assert secret not in first.stderr + done.stderr, "the token secret was printed"
    assert all(secret.encode() not in p.read_bytes() for p in root.rglob("*") if p.is_file())
    assert (root / "var/lib/pifleet/server-ca.pem").read_bytes() == server.ca_pem


def test_a_join_a_power_cut_broke_off_is_reset_then_joins(
    server: KubeadmTestServer, tmp_path: Path
) -> None:
    root = kubeadm_device(tmp_path / "device", server, server.mint_token(), [server.ca_hash])
    first = run_agent(root, env(root, KUBEADM_STANDIN_STOP="kubelet-start"))
    assert "failed state=start" in first.stderr and "stopped in kubelet-start" in first.stderr
    assert (root / "etc/kubernetes/pki/ca.crt").exists()
    done = run_agent(root, env(root))
    assert done.returncode == 0, done.stderr
    assert "kubeadm reset --force first" in done.stderr
    assert "kubeadm: This node has joined the cluster" in done.stderr
    assert server.nodes() == ["edge-10000000abcdef01"]


def test_swap_on_is_kubeadms_preflight_error_as_a_verdict(
    server: KubeadmTestServer, tmp_path: Path
) -> None:
    root = kubeadm_device(tmp_path / "device", server, server.mint_token(), [server.ca_hash])
    swaps = b"Filename\tType\tSize\tUsed\tPriority\n/var/swap file 102396 0 -2\n"
    write(root / "proc/swaps", swaps)
    done = run_agent(root, env(root))
    assert "failed state=start" in done.stderr and "[ERROR Swap]" in done.stderr
    assert server.nodes() == []


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
    done = run_agent(root, env(root))
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


def test_a_clock_in_1970_is_set_from_the_pinned_api_server(
    server: KubeadmTestServer, tmp_path: Path
) -> None:
    """No RTC and no time sync (a Pi 3 at an edge site without NTP): after clock_sync_timeout
    the time comes from the Date header of the API server the pin authenticates."""
    root = kubeadm_device(tmp_path / "device", server, server.mint_token(), [server.ca_hash])
    (root / "run/systemd/timesync/synchronized").unlink()
    write(root / "run/pifleet/clock-offset", f"{-(time.time() - 86400.0)!r}\n".encode())
    done = run_agent(root, env(root))
    assert done.returncode == 0, done.stderr
    assert "no time sync; taking the time from the pinned API server" in done.stderr
    assert "clock set from the API server's Date header" in done.stderr
    offset = float((root / "run/pifleet/clock-offset").read_text())
    assert abs(offset) < 60, "the clock was not set from the server"
    assert server.nodes() == ["edge-10000000abcdef01"]
    assert [r.path for r in server.requests].count("/version") == 1


def test_the_clock_is_not_taken_from_a_server_the_pin_does_not_prove(
    server: KubeadmTestServer, tmp_path: Path
) -> None:
    token = server.mint_token()
    server.forge()  # knows the token, so the JWS verifies; its CA is not the pinned one
    root = kubeadm_device(tmp_path / "device", server, token, [server.ca_hash])
    (root / "run/systemd/timesync/synchronized").unlink()
    write(root / "run/pifleet/clock-offset", f"{-(time.time() - 86400.0)!r}\n".encode())
    done = run_agent(root, env(root))
    assert done.returncode == 2 and "failed state=clock" in done.stderr, done.stderr
    assert "/version" not in [r.path for r in server.requests], "a Date header was asked for"
    assert float((root / "run/pifleet/clock-offset").read_text()) < -1e6, "the clock moved"


def test_a_late_api_server_is_waited_for(server: KubeadmTestServer, tmp_path: Path) -> None:
    """Nothing listens on the API server's port for the first seconds (a control plane still
    coming up): the agent's discovery waits and retries, then joins, no verdict."""
    root = kubeadm_device(tmp_path / "device", server, server.mint_token(), [server.ca_hash])
    server.set_down(True)
    timer = threading.Timer(4.0, server.set_down, args=(False,))
    timer.start()
    try:
        done = run_agent(root, env(root))
    finally:
        timer.cancel()
    assert done.returncode == 0, done.stderr
    waits = [ln for ln in done.stderr.splitlines() if "verify: waiting for the API server" in ln]
    assert waits, done.stderr
    assert "failed state=" not in done.stderr
    assert server.nodes() == ["edge-10000000abcdef01"]
