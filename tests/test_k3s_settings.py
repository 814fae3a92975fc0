"""K3s settings at build time (issue 24): what the kubelet and K3s refuse, refused or warned
about before a card is flashed, and the K3s settings real fleets need reaching config.yaml."""

from __future__ import annotations

import logging
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


# -- item 11: cluster.k3s_config ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml", "expected"),
    [
        ("etcd-snapshot-retension: 3", "did you mean etcd-snapshot-retention?"),
        ("disable-traefk: true", "not a K3s flag"),
        ("node-lable: [a=b]", "did you mean node-label, which pifleet writes itself (use cluster"),
        ("node-name: x", "use devices[].hostname"),
        ("token: abc", "use cluster.token_file or cluster.token_env"),
        ("server: https://other:6443", "use cluster.server"),
        ("node-label: [a=b]", "use cluster.node_labels"),
        ("cluster-init: true", "use cluster.create"),
        ("node-ip: 10.0.0.5", "use node_ip"),
        ("data-dir: /srv/k3s", "pifleet lays out /var/lib/rancher/k3s"),
        ("embedded-registry: true", "use cluster.embedded_registry"),
        ("system-default-registry: r.lan", "use cluster.system_default_registry"),
        ("private-registry: /x.yaml", "use cluster.registries"),
        ("vpn-auth: 'name=tailscale,joinKey=k'", "use vpn-auth-file"),
        ("datastore-endpoint: 'mysql://u:pw@tcp(db:3306)/k3s'", "a DSN without a password"),
        ("snapshotter: 7", "must be a string"),
        ("write-kubeconfig-mode: 0644", "quote it"),
        ("selinux: 'yes'", "must be true or false"),
        ("lb-server-port: '6444'", "must be an integer"),
        ("kube-proxy-arg: [1]", "must be a string"),
    ],
)
def test_k3s_config_refuses_what_k3s_would_ignore_or_pifleet_owns(
    tmp_path: Path, yaml: str, expected: str
) -> None:
    message = refused(fleet(tmp_path, cluster=f"  k3s_config: {{{yaml}}}\n"))
    assert f"cluster.k3s_config.{yaml.split(':')[0]}" in message and expected in message
    assert "abc" not in message and "joinKey=k" not in message and ":pw@" not in message


def test_k3s_config_reads_each_flag_as_its_kind(tmp_path: Path) -> None:
    config = load(
        fleet(
            tmp_path,
            cluster="  k3s_config: {kube-proxy-arg: metrics-bind-address=0.0.0.0, selinux: true,"
            " lb-server-port: 6445, pause-image: 'registry.lan/pause:3.6'}\n",
            devices="    k3s_config: {selinux: false}\n",
        )
    )
    assert dict(config.cluster.k3s_config) == {
        "kube-proxy-arg": ("metrics-bind-address=0.0.0.0",),
        "selinux": True,
        "lb-server-port": 6445,
        "pause-image": "registry.lan/pause:3.6",
    }
    assert config.devices[0].k3s_config == (("selinux", False),)


def test_a_server_flag_on_agents_is_refused(tmp_path: Path) -> None:
    message = refused(fleet(tmp_path, cluster="  k3s_config: {disable: [traefik]}\n"))
    assert "cluster.k3s_config.disable: a `k3s server` flag only" in message
    assert "`k3s agent`" in message
    message = refused(
        fleet(tmp_path, devices="    k3s_config: {etcd-arg: [quota-backend-bytes=1]}\n")
    )
    assert "devices[0].k3s_config.etcd-arg: not a `k3s server`" not in message
    assert "not a `k3s agent` flag, and pi-1 is an agent" in message


def test_an_agent_only_flag_on_servers_is_refused(tmp_path: Path) -> None:
    path = fleet(
        tmp_path,
        cluster="  role: server\n  k3s_config: {disable-apiserver-lb: true}\n",
    )
    assert "a `k3s agent` flag only" in refused(path)
    path = fleet(tmp_path, cluster="  role: server\n  k3s_config: {disable: [traefik]}\n")
    assert dict(load(path).cluster.k3s_config) == {"disable": ("traefik",)}


CREATED = (
    "  create: true\n  servers: [srv-1]\n"
    "  k3s_config: {disable: [traefik], kube-proxy-arg: [proxy-mode=ipvs]}\n"
)


def created_fleet(tmp_path: Path, server: str = "", agent: str = "") -> Path:
    text = (
        f"name: f\ncluster:\n  server: https://srv-1:6443\n{CREATED}"
        f"devices:\n  - hostname: srv-1\n{server}  - hostname: pi-1\n{agent}"
    )
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return path


def test_with_create_server_flags_go_to_servers_only(tmp_path: Path) -> None:
    from builder.config import k3sconfig

    config = load(created_fleet(tmp_path, server="    k3s_config: {etcd-snapshot-retention: 2}\n"))
    assert k3sconfig.for_role(config, "agent") == {"kube-proxy-arg": ["proxy-mode=ipvs"]}
    assert k3sconfig.for_role(config, "server") == {
        "disable": ["traefik"],
        "kube-proxy-arg": ["proxy-mode=ipvs"],
    }
    message = refused(
        created_fleet(tmp_path, agent="    k3s_config: {etcd-snapshot-retention: 2}\n")
    )
    assert "devices[1].k3s_config.etcd-snapshot-retention: not a `k3s agent` flag" in message
    message = refused(created_fleet(tmp_path, server="    k3s_config: {tls-san: [vip.lan]}\n"))
    assert "with cluster.create pifleet writes tls-san itself" in message


def test_k3s_config_reaches_config_yaml_from_a_built_images_seed(fleet_dir: Path) -> None:
    """End to end without QEMU: the build writes join.json and device.json into the real
    image files, and the agent's own config.yaml writer merges them (the device wins)."""
    from builder.disk.image import Image
    from firstboot import joinconfig, roles
    from firstboot.paths import Root
    from tests.conftest import fleet_yaml

    cluster = (
        "cluster:\n  server: https://k3s.example.net:6443\n  token_file: token\n"
        "  k3s_config: {kube-proxy-arg: [proxy-mode=ipvs], selinux: true, lb-server-port: 6445}\n"
        "  flannel_iface: eth0"
    )
    devices = (
        "devices:\n  - hostname: pi-1\n    k3s_config: {selinux: false}\n"
        "    node_ip: 10.0.0.5,fd00::5\n    flannel_iface: wlan0\n  - hostname: pi-2"
    )
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(cluster=cluster, devices=devices))
    done = pifleet("build", "fleet.yaml", "--per-device", cwd=fleet_dir)
    assert done.returncode == 0, done.stderr
    configs = {}
    for name in ("pi-1", "pi-2"):
        image = Image.open(fleet_dir / "out" / f"{name}.img")
        join_raw = image.root.read(joinconfig.JOIN_CONFIG_PATH)
        device_raw = image.boot.read("/pifleet/device.json")
        assert join_raw is not None and device_raw is not None
        join = joinconfig.load_join_config(join_raw)
        device = joinconfig.load_device_config(device_raw, name)
        configs[name] = roles.k3s_config(Root(fleet_dir), join, device, join.server, name).decode()
    for name, text in configs.items():
        assert 'kube-proxy-arg:\n  - "proxy-mode=ipvs"\n' in text, name
        assert "lb-server-port: 6445\n" in text and text.count("selinux:") == 1, name
        assert text.count("node-name:") == 1 and text.count("flannel-iface:") == 1, name
    assert "selinux: false\n" in configs["pi-1"] and "selinux: true\n" in configs["pi-2"]
    assert 'node-ip:\n  - "10.0.0.5"\n  - "fd00::5"\n' in configs["pi-1"]
    assert 'flannel-iface: "wlan0"' in configs["pi-1"]
    assert 'flannel-iface: "eth0"' in configs["pi-2"] and "node-ip" not in configs["pi-2"]


# -- item 9: agents never carry the server token by default -------------------------------------

K10 = "K10" + "7e" * 32


def token_fleet(tmp_path: Path, token: str, cluster: str = "") -> Path:
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "token").chmod(0o600)
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"name: f\ncluster:\n  server: {SERVER}\n  token_file: token\n  ca_hash: '{'7e' * 32}'\n"
        f"{cluster}"
    )
    return path


def warnings_of(caplog: pytest.LogCaptureFixture, path: Path) -> list[str]:
    from builder.config.token import read_token

    config = load(path)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        secret = read_token(config.cluster, str(config.source)).reveal()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    for line in lines:
        assert secret.rsplit(":", 1)[-1] not in line and "\n" not in line
    return lines


def test_cluster_create_gives_agents_an_agent_token_by_default(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "name: f\ncluster:\n  create: true\n  server: https://srv-1:6443\n  servers: [srv-1]\n"
        "devices:\n  - hostname: srv-1\n  - hostname: pi-1\n"
    )
    config = load(path)
    assert config.cluster.agent_token is True
    assert config.cluster.token_file == tmp_path / "cluster" / "agent-token"


def test_a_server_token_on_agents_warns_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (line,) = warnings_of(caplog, token_fleet(tmp_path, f"{K10}::server:s3cret-pw"))
    assert line.startswith(f"warning: {tmp_path / 'fleet.yaml'}: cluster.token_file: ")
    assert "server token on agents" in line and "/v1-k3s/server-bootstrap" in line
    assert "agent token" in line and "bootstrap" in line


def test_a_short_token_on_agents_warns_that_it_may_be_the_server_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (line,) = warnings_of(caplog, token_fleet(tmp_path, "s3cret-pw"))
    assert "short token on agents is the server token unless" in line and "--agent-token" in line


@pytest.mark.parametrize(
    "token",
    [f"{K10}::node:s3cret-pw", f"{K10}::abcdef.0123456789abcdef", "abcdef.0123456789abcdef"],
)
def test_agent_and_bootstrap_tokens_do_not_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, token: str
) -> None:
    assert warnings_of(caplog, token_fleet(tmp_path, token)) == []


def test_a_server_token_on_a_server_does_not_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = token_fleet(tmp_path, f"{K10}::server:s3cret-pw", cluster="  role: server\n")
    assert warnings_of(caplog, path) == []


def created_cluster(tmp_path: Path, agent_token: str, files: tuple[str, ...]) -> Path:
    (tmp_path / "cluster").mkdir(mode=0o700)
    for name in files:
        user = "node" if name == "agent-token" else "server"
        (tmp_path / "cluster" / name).write_text(f"{K10}::{user}:s3cret-pw\n")
        (tmp_path / "cluster" / name).chmod(0o600)
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "name: f\ncluster:\n  create: true\n  server: https://srv-1:6443\n  servers: [srv-1]\n"
        f"{agent_token}devices:\n  - hostname: srv-1\n  - hostname: pi-1\n"
    )
    return path


def test_create_without_an_agent_token_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = created_cluster(tmp_path, "  agent_token: false\n", ("token",))
    (line,) = warnings_of(caplog, path)
    assert "cluster.agent_token is false, so every agent carries the server token" in line


def test_a_cluster_made_without_an_agent_token_names_the_way_out(tmp_path: Path) -> None:
    from builder.config.token import read_token

    config = load(created_cluster(tmp_path, "", ("token",)))
    with pytest.raises(UserError) as info:
        read_token(config.cluster, str(config.source))
    message = str(info.value)
    assert "cluster.agent_token: " in message and "made without an agent token" in message
    assert "cluster.agent_token: false" in message and "s3cret" not in message


# -- items 5, 1 and 13 (build half): warnings -------------------------------------------------


def advice_for(path: Path) -> list[str]:
    from builder.config.advice import warnings

    lines = warnings(load(path))
    assert all("\n" not in line and line.startswith("warning: ") for line in lines)
    return lines


def server_fleet(tmp_path: Path, server: str = SERVER, srv: str = "", top: str = "") -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"name: f\n{top}cluster:\n  create: true\n  server: {server}\n  servers: [srv-1]\n"
        f"devices:\n  - hostname: srv-1\n{srv}  - hostname: pi-1\n"
    )
    return path


def test_a_server_without_a_static_address_warns(tmp_path: Path) -> None:
    (line,) = advice_for(server_fleet(tmp_path))
    assert "devices[0]: server srv-1 has no static address" in line and "k3s-io/k3s#11778" in line
    assert advice_for(server_fleet(tmp_path, srv="    address: 10.0.0.5/24\n")) == []


def test_role_server_without_devices_warns_once(tmp_path: Path) -> None:
    (line,) = advice_for(fleet(tmp_path, cluster="  role: server\n"))
    assert "server pi-1 has no static address" in line
    path = tmp_path / "bare.yaml"
    path.write_text(f"name: f\ncluster:\n  server: {SERVER}\n  token_env: TOK\n  role: server\n")
    (line,) = advice_for(path)
    assert "cluster.role: server (every device of the image) has no static address" in line


def test_agents_without_static_addresses_do_not_warn(tmp_path: Path) -> None:
    assert advice_for(fleet(tmp_path)) == []


@pytest.mark.parametrize("host", ["k3s.local", "K3S.LOCAL", "srv.lab.local"])
def test_an_mdns_server_name_warns_naming_mdns(tmp_path: Path, host: str) -> None:
    path = server_fleet(tmp_path, server=f"https://{host}:6443", srv="    address: 10.0.0.5/24\n")
    (line,) = advice_for(path)
    assert "cluster.server:" in line and "mDNS (.local)" in line and "k3s-io/k3s#9748" in line


def test_a_dns_name_does_not_warn(tmp_path: Path) -> None:
    path = server_fleet(
        tmp_path, server="https://k3s.local.example:6443", srv="    address: 10.0.0.5/24\n"
    )
    assert advice_for(path) == []


@pytest.mark.parametrize(
    ("board", "warns"),
    [("pi3b+", True), ("zero2w", True), ("pi4-1gb", True), ("pi4-2gb", False), ("pi5-8gb", False)],
)
def test_a_server_on_a_small_board_warns(tmp_path: Path, board: str, warns: bool) -> None:
    srv = f"    address: 10.0.0.5/24\n    board: {board}\n"
    lines = advice_for(server_fleet(tmp_path, srv=srv))
    assert bool(lines) == warns
    if warns:
        assert f"server srv-1 is a {board} with" in lines[0] and "2 GB" in lines[0]


def test_the_fleet_board_applies_to_servers_and_agents_never_warn(tmp_path: Path) -> None:
    path = server_fleet(tmp_path, srv="    address: 10.0.0.5/24\n", top="hardware: {board: pi3b}\n")
    (line,) = advice_for(path)
    assert "server srv-1 is a pi3b with 1024 MB" in line
    path = server_fleet(
        tmp_path,
        srv="    address: 10.0.0.5/24\n    board: pi5-4gb\n",
        top="hardware: {board: pi3b}\n",
    )
    assert advice_for(path) == []
    assert "board" in refused(server_fleet(tmp_path, srv="    board: pi6\n"))


def test_the_build_prints_the_warnings(fleet_dir: Path) -> None:
    from tests.conftest import fleet_yaml

    cluster = "cluster:\n  server: https://k3s.local:6443\n  token_file: token\n  role: server"
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(cluster=cluster))
    done = pifleet("build", "fleet.yaml", cwd=fleet_dir)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert any("mDNS (.local)" in line for line in lines), done.stderr
    assert any("has no static address" in line for line in lines), done.stderr
