"""The first-boot agent on the servers and agents of a cluster pifleet creates, as real
processes on fake device roots (tests/agent_helpers.py), with the K3s stand-in as
`k3s server` on 127.0.0.1 serving the CA files the device carries.

The first server initialises from its own CA (no server to ask), writes `cluster-init`
exactly once, and a resumed agent never turns a seed into another one: a server whose
etcd member exists keeps its config.yaml. Joining servers and agents wait for a server
with the usual backoff and join pinned to the hash `cluster init` made.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest

from firstboot import joinconfig
from tests.agent_helpers import run_agent, run_until, write
from tests.cluster_devices import SANS, device, first_server, free_port, standin_env


def state_of(root: Path) -> dict[str, object]:
    return cast(dict[str, object], json.loads((root / "var/lib/pifleet/state.json").read_text()))


def test_first_server_initialises_then_a_server_and_an_agent_join(
    cluster: dict[str, bytes], tmp_path: Path, roots: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, port, env = first_server(roots, tmp_path, cluster)
    done = run_agent(first, env)
    assert done.returncode == 0, done.stderr[-3000:]
    config = (first / "etc/rancher/k3s/config.yaml").read_text()
    assert "cluster-init: true\n" in config and "\nserver:" not in config
    assert 'tls-san:\n  - "edge-srv-1"\n  - "edge-srv-2"\n  - "edge-srv-3"\n' in config
    assert 'agent-token-file: "/etc/rancher/k3s/agent-token"' in config
    ca_hash = cluster["hash"].decode()
    assert state_of(first)["ca_hash"] == ca_hash
    assert (first / "etc/rancher/k3s/join-token").read_bytes() == cluster["token"]
    assert (first / "etc/rancher/k3s/join-token").stat().st_mode & 0o777 == 0o600
    unit = (first / "etc/systemd/system/k3s.service").read_text()
    assert "ExecStart=/usr/local/bin/k3s \\\n    server \\\n" in unit
    member = json.loads(
        (first / "var/lib/rancher/k3s/server/db/etcd/standin-member.json").read_text()
    )
    assert member == {"name": "edge-srv-1", "how": "cluster-init"}
    assert "waiting for the server" not in done.stderr

    second = device(roots, tmp_path, "edge-srv-2", cluster, port, role="server",
                    cluster_init=False, tls_san=SANS, server=f"https://127.0.0.1:{port}")  # fmt: skip
    joined = run_agent(second, standin_env(free_port()))
    assert joined.returncode == 0, joined.stderr[-3000:]
    text = (second / "etc/rancher/k3s/config.yaml").read_text()
    assert f'server: "https://127.0.0.1:{port}"' in text and "cluster-init" not in text
    assert state_of(second)["ca_hash"] == ca_hash
    member = json.loads(
        (second / "var/lib/rancher/k3s/server/db/etcd/standin-member.json").read_text()
    )
    assert member["how"] == f"joined https://127.0.0.1:{port}"

    agent = device(roots, tmp_path, "edge-agent-1", cluster, port, role="agent")
    joined = run_agent(agent)
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert state_of(agent)["ca_hash"] == ca_hash
    pinned = (agent / "etc/rancher/k3s/join-token").read_text().strip()
    assert pinned == cluster["agent-token"].decode().strip()
    registry = json.loads((first / "var/lib/rancher/k3s/server/standin-registry.json").read_text())
    assert sorted(registry["nodes"]) == ["edge-agent-1", "edge-srv-1"]  # the server's own too
    for out in (done, joined):
        for secret in ("5e" * 16, "a9" * 16):
            assert secret not in out.stdout + out.stderr


def test_power_cut_in_start_resumes_without_a_second_config(
    cluster: dict[str, bytes], tmp_path: Path, roots: list[Path]
) -> None:
    first, _, env = first_server(roots, tmp_path, cluster)
    cut = run_agent(first, {**env, "PIFLEET_FAULT": "kill-after:start"})
    assert cut.returncode != 0 and state_of(first)["state"] == "start"
    config = first / "etc/rancher/k3s/config.yaml"
    written = config.stat().st_ino, config.read_bytes()
    resumed = run_agent(first, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (config.stat().st_ino, config.read_bytes()) == written
    assert "configure" not in [h["state"] for h in state_of(first)["history"][-3:]]  # type: ignore[index]


def test_existing_etcd_member_keeps_its_config_whatever_the_seed_says(
    cluster: dict[str, bytes], tmp_path: Path, roots: list[Path]
) -> None:
    """K3s ran (its etcd member exists), then the state is lost and the seed now says join:
    the agent runs configure again but never turns the member's config into another."""
    first, port, env = first_server(roots, tmp_path, cluster)
    assert run_agent(first, {**env, "PIFLEET_FAULT": "kill-before:cleanup"}).returncode != 0
    assert (first / "var/lib/rancher/k3s/server/db/etcd/member/wal").is_dir()
    config = first / "etc/rancher/k3s/config.yaml"
    before = config.read_bytes()
    (first / "var/lib/pifleet/state.json").unlink()
    rejoin = joinconfig.DeviceConfig(
        hostname="edge-srv-1", role="server", cluster_init=False, tls_san=SANS,
        server=f"https://127.0.0.1:{port}",
    )  # fmt: skip
    write(first / "boot/firmware/pifleet/device.json", joinconfig.dump_device_config(rejoin))
    again = run_agent(first, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert config.read_bytes() == before and b"cluster-init: true" in before
    assert "an etcd member exists" in again.stderr


def test_joining_server_waits_and_never_initialises(
    cluster: dict[str, bytes], tmp_path: Path, roots: list[Path]
) -> None:
    port = free_port()  # nothing listens there
    second = device(roots, tmp_path, "edge-srv-2", cluster, port, role="server",
                    cluster_init=False, tls_san=SANS, server=f"https://127.0.0.1:{port}")  # fmt: skip
    seen = run_until(second, "waiting for the server", timeout=60)
    assert "state=verify" in seen and "waiting for the server" in seen
    assert not (second / "etc/rancher/k3s/config.yaml").exists()
    assert not (second / "var/lib/rancher/k3s/server/db").exists()


def test_with_an_agent_token_the_server_token_does_not_join_an_agent(
    cluster: dict[str, bytes], tmp_path: Path, roots: list[Path]
) -> None:
    """K3s's `node` user has the --agent-token password once one is set (passwd.go)."""
    first, port, env = first_server(roots, tmp_path, cluster)
    assert run_agent(first, env).returncode == 0
    agent = device(roots, tmp_path, "edge-agent-2", cluster, port, role="agent")
    write(agent / "etc/pifleet/token", cluster["token"], 0o600)  # the server token
    refused = run_agent(agent)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "failed state=verify" in refused.stderr and "401" in refused.stderr
    registry = (first / "var/lib/rancher/k3s/server/standin-registry.json").read_text()
    assert "edge-agent-2" not in registry  # neither a password nor a Node


def test_first_server_refuses_a_token_of_another_cluster(
    cluster: dict[str, bytes], tmp_path: Path, roots: list[Path]
) -> None:
    """The first server pins its own CA by the token's hash too: another cluster's token
    (or another cluster's CA) is a verdict, and K3s is never configured or started."""
    first, _, env = first_server(roots, tmp_path, cluster)
    other = "K10" + "3c" * 32 + "::server:" + "5e" * 16 + "\n"
    write(first / "etc/pifleet/token", other.encode(), 0o600)
    refused = run_agent(first, env)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert (
        "failed state=verify" in refused.stderr and "token CA hash does not match" in refused.stderr
    )
    assert not (first / "etc/rancher/k3s/config.yaml").exists()
    assert not (first / "var/lib/rancher/k3s/server/db").exists()
