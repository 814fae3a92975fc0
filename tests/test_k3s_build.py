"""Build side of joining real K3s servers: unpinned tokens refused or pinned, role server
token rules, `pifleet token pin`, cluster.proxy, and install.sh's helper scripts."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from builder.config.fleet import load
from builder.config.model import Cluster
from builder.config.token import read_token
from builder.testserver.server import K3sTestServer
from builder.util.errors import UserError
from builder.util.render import render
from firstboot import k3sfiles
from tests.conftest import fleet_yaml, pifleet

H = "ab" * 32
BOOT = "abcdef.0123456789abcdef"


def cluster(tmp_path: Path, token: str, **changes: object) -> Cluster:
    path = tmp_path / "token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    base = Cluster(
        server="https://k3s.example.net:6443",
        token_file=path,
        token_env=None,
        token_in_boot=False,
        role="agent",
        node_labels=(),
        node_taints=(),
        kubelet_args=(),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("token", ["short-password", BOOT, f"K10::{BOOT}", "K10::node:pw"])
def test_unpinned_tokens_are_refused_with_why_and_how(tmp_path: Path, token: str) -> None:
    with pytest.raises(UserError) as caught:
        read_token(cluster(tmp_path, token), "fleet.yaml")
    line = str(caught.value)
    assert "carries no CA hash" in line and "send its password" in line
    assert "cluster.ca_hash" in line and "pifleet token pin https://k3s.example.net:6443" in line
    assert "\n" not in line and token.rsplit(":", 1)[-1] not in line


def test_unpinned_tokens_are_pinned_by_ca_hash_or_ca_file(tmp_path: Path) -> None:
    assert read_token(cluster(tmp_path, "pw", ca_hash=H), "f").reveal() == f"K10{H}::node:pw"
    assert read_token(cluster(tmp_path, BOOT, ca_hash=H), "f").reveal() == f"K10{H}::{BOOT}"
    server = K3sTestServer(state_dir=tmp_path / "s", ca_kind="bundle")
    (tmp_path / "ca.crt").write_bytes(server.ca.cacerts)
    pinned = read_token(cluster(tmp_path, "pw", ca_file=tmp_path / "ca.crt"), "f").reveal()
    assert pinned == f"K10{server.ca_hash}::node:pw"
    allowed = read_token(cluster(tmp_path, "pw", allow_unpinned=True), "f").reveal()
    assert allowed == "pw"
    with pytest.raises(UserError, match=r"differs from the hash of cluster\.ca_file"):
        read_token(cluster(tmp_path, "pw", ca_file=tmp_path / "ca.crt", ca_hash=H), "f")
    with pytest.raises(UserError, match="the token's CA hash differs"):
        read_token(cluster(tmp_path, f"K10{'cd' * 32}::server:pw", ca_hash=H), "f")
    with pytest.raises(UserError, match="not 64 lowercase hex"):
        read_token(cluster(tmp_path, f"K10{H.upper()}::server:pw"), "f")
    (tmp_path / "empty.crt").write_text("nothing\n")
    with pytest.raises(UserError, match="holds no PEM certificate"):
        read_token(cluster(tmp_path, "pw", ca_file=tmp_path / "empty.crt"), "f")


def test_role_server_refuses_bootstrap_and_node_tokens(tmp_path: Path) -> None:
    for token, why in ((f"K10{H}::{BOOT}", "bootstrap token"), (f"K10{H}::node:pw", "(node)")):
        with pytest.raises(UserError, match="cannot join a server") as caught:
            read_token(cluster(tmp_path, token, role="server"), "f")
        assert why in str(caught.value)
    ok = read_token(cluster(tmp_path, "pw", role="server", ca_hash=H), "f").reveal()
    assert ok == f"K10{H}::server:pw"


def test_config_keys_and_proxy_reach_the_env_file(tmp_path: Path) -> None:
    section = (
        "cluster:\n  server: https://k3s.example.net:6443\n  token_file: token\n"
        f"  ca_hash: '{H}'\n  ca_file: server-ca.crt\n  allow_unpinned: false\n"
        "  proxy: {HTTP_PROXY: 'http://proxy:3128', no_proxy: '127.0.0.1,10.0.0.0/8', "
        "CONTAINERD_HTTPS_PROXY: 'http://proxy:3128'}"
    )
    (tmp_path / "fleet.yaml").write_text(fleet_yaml(cluster=section))
    config = load(tmp_path / "fleet.yaml")
    assert config.cluster.ca_hash == H and config.cluster.ca_file == tmp_path / "server-ca.crt"
    env = k3sfiles.env_file(dict(config.cluster.proxy)).decode().splitlines()
    assert "HTTP_PROXY='http://proxy:3128'" in env
    assert "no_proxy='127.0.0.1,10.0.0.0/8'" in env
    assert "CONTAINERD_HTTPS_PROXY='http://proxy:3128'" in env
    for bad in ("ALL_PROXY: x", 'HTTP_PROXY: "it\'s"'):
        (tmp_path / "fleet.yaml").write_text(
            fleet_yaml(cluster=section.split("  proxy:")[0] + f"  proxy: {{{bad}}}")
        )
        with pytest.raises(UserError, match=r"cluster\.proxy"):
            load(tmp_path / "fleet.yaml")
    (tmp_path / "fleet.yaml").write_text(fleet_yaml(cluster=section.replace(H, H.upper())))
    with pytest.raises(UserError, match=r"cluster\.ca_hash"):
        load(tmp_path / "fleet.yaml")


@pytest.mark.parametrize("kind", ["single", "bundle"])
def test_token_pin_shows_the_fingerprint_and_writes_0600(tmp_path: Path, kind: str) -> None:
    with K3sTestServer(state_dir=tmp_path / "s", ca_kind=kind, named=False) as server:
        (tmp_path / "short").write_text(server.password + "\n")
        (tmp_path / "short").chmod(0o600)
        out = tmp_path / "pinned"
        done = pifleet(
            "token",
            "pin",
            server.url,
            "--token-file",
            "short",
            "-o",
            "pinned",
            "--yes",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        assert out.stat().st_mode & 0o777 == 0o600
        assert out.read_text().strip() == f"K10{server.ca_hash}::node:{server.password}"
        if kind == "single":
            assert f"sha256 {server.ca_hash}" in done.stdout and "sha256sum" in done.stdout
        else:
            fingerprint = ":".join(server.ca_hash[i : i + 2] for i in range(0, 64, 2)).upper()
            assert fingerprint in done.stdout and "-fingerprint -sha256" in done.stdout
        assert server.password not in done.stdout + done.stderr
        asked = pifleet(
            "token", "pin", server.url, "--token-file", "short", "-o", "again", cwd=tmp_path
        )
        assert asked.returncode == 2 and "give --yes" in asked.stderr
        assert not (tmp_path / "again").exists()
        (tmp_path / "other").write_text(f"K10{'cd' * 32}::server:x\n")
        (tmp_path / "other").chmod(0o600)
        other = pifleet(
            "token", "pin", server.url, "--token-file", "other", "-o", "o", "--yes", cwd=tmp_path
        )
        assert other.returncode == 2 and "already pins another CA" in other.stderr
        check = pifleet(
            "token", "check", "--server", server.url, "--token-file", "pinned", cwd=tmp_path
        )
        assert check.returncode == 0 and "CA pinned" in check.stdout


def test_killall_and_uninstall_scripts_are_valid_shell(tmp_path: Path) -> None:
    killall = render("k3s-killall.sh", version="test")
    uninstall = render(
        "k3s-uninstall.sh",
        version="test",
        script="k3s-agent-uninstall.sh",
        unit="k3s-agent.service",
    )
    for name, data in (("killall", killall), ("uninstall", uninstall)):
        (tmp_path / name).write_bytes(data)
        assert data.startswith(b"#!/bin/sh\n")
        subprocess.run(["sh", "-n", str(tmp_path / name)], check=True)
    text = uninstall.decode()
    assert "/usr/local/bin/k3s-killall.sh" in text and "systemctl disable k3s-agent.service" in text
    assert (
        "rm -f /etc/systemd/system/k3s-agent.service /etc/systemd/system/k3s-agent.service.env"
        in text
    )
    assert '"$table-save" | grep -v KUBE-' in killall.decode()
    assert "containerd-shim" in killall.decode()
