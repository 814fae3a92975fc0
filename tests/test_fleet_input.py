"""The fleet file's whole input surface: every key with one bad value, and the hostile files
an audit fed it (issue 21, item 8). Each is refused in one line, exit 2, never an internal error.

`test_every_schema_key_has_a_bad_value_case` walks config/schema.json, so a key added without
a case here fails the suite.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.config.fleet import load
from builder.config.schema import SCHEMA_PATH
from builder.config.token import read_token, read_token_file
from builder.util.errors import UserError
from tests.conftest import TEST_TOKEN, pifleet
from tests.fleet_data import VALID, concrete, config_with, schema_keys

WIFI = {"ssid": "edge", "country": "DE"}

# Key path in the schema ([] for list items) -> (the bad value, what else it needs). The bad
# value goes at the path, list items being the first; `with` is merged in first.
K8S_BINARIES = {"kubeadm": "kubeadm", "kubelet": "kubelet", "kubectl": "kubectl"}
CASES: dict[str, tuple[Any, dict[str, Any]]] = {
    "name": ("Edge Fleet", {}),
    "arch": ("x86", {}),
    "base": ("", {}),
    "base.name": ("", {"base": {}}),
    "base.path": ("", {}),
    "base.url": ("ftp://mirror/x.img", {"base": {"sha256": "a" * 64}}),
    "base.sha256": ("abc", {}),
    "base.os_list": ("", {"base": {"name": "raspios"}}),
    "k3s.version": ("1.33", {}),
    "k3s.channel": ("../../evil", {}),
    "k3s.binary": ("", {}),
    "k3s.sha256": ("xyz", {"k3s": {"binary": "k3s"}}),
    "k3s.release_url": ("file:///etc", {}),
    "k3s.channel_url": ("ftp://x", {}),
    "k3s.airgap_images": (5, {}),
    "k3s.test_standin": ("yes", {}),
    "kubernetes.version": ("1.34", {}),
    "kubernetes.release_url": ("ftp://mirror", {"kubernetes": {"version": "v1.34.1"}}),
    "kubernetes.kubeadm": ("", {}),
    "kubernetes.kubelet": ("", {}),
    "kubernetes.kubectl": ("", {}),
    "kubernetes.sha256.kubeadm": ("xyz", {"kubernetes": K8S_BINARIES}),
    "kubernetes.sha256.kubelet": ("a" * 63, {"kubernetes": K8S_BINARIES}),
    "kubernetes.sha256.kubectl": ("g" * 64, {"kubernetes": K8S_BINARIES}),
    "kubernetes.test_standin": ("yes", {"kubernetes": K8S_BINARIES}),
    "cluster.server": ("http://k3s.example.net", {}),
    "cluster.token_file": ("", {}),
    "cluster.token_env": ("1BAD", {}),
    "cluster.token_in_boot": ("no", {}),
    "cluster.role": ("boss", {}),
    "cluster.node_labels": ({"bad key!": "x"}, {}),
    "cluster.node_taints": (["nope"], {}),
    "cluster.kubelet_args": (["--max-pods=10"], {}),
    "cluster.ca_hash": ("ABC", {}),
    "cluster.ca_file": ("", {}),
    "cluster.allow_unpinned": ("y", {}),
    "cluster.proxy": ({"FOO": "x"}, {}),
    "cluster.registries": ({"mirrors": {"docker.io": {"endpoint": ["ftp://r"]}}}, {}),
    "cluster.system_default_registry": ("not a host", {}),
    "cluster.embedded_registry": ("yes", {}),
    "cluster.create": ("y", {}),
    "cluster.servers": ([], {}),
    "cluster.agent_token": ("y", {}),
    "cluster.initialized": ("y", {}),
    "cluster.k3s_config": ({"node-name": "x"}, {}),
    "cluster.node_ip": ("10.0.0.300", {}),
    "cluster.node_external_ip": ("10.0.0.5,10.0.0.6", {}),
    "cluster.flannel_iface": ("eth0/../x", {}),
    "cluster.advertise_address": ("10.0.0.5/24", {}),
    "cluster.kind": ("k8s", {}),
    "cluster.ca_cert_hashes": (
        ["md5:" + "ab" * 16],
        {"cluster": {"kind": "kubeadm"}, "kubernetes": K8S_BINARIES},
    ),
    "users[].name": ("Root", {}),
    "users[].ssh_authorized_keys": (["EOF"], {}),
    "users[].sudo": ("y", {}),
    "users[].groups": (["adm,sudo"], {}),
    "users[].shell": ("bash", {}),
    "network.ethernet": ("../../../../etc/cron.d/evil", {}),
    "network.wifi.ssid": ("", {"network": {"wifi": WIFI}}),
    "network.wifi.password_env": ("1x", {"network": {"wifi": WIFI}}),
    "network.wifi.country": ("de", {"network": {"wifi": WIFI}}),
    "network.wifi.hidden": ("y", {"network": {"wifi": WIFI}}),
    "network.static.address": ("10.0.0.0/24", {}),
    "network.static.gateway": ("10.1.0.1", {"network": {"static": {"address": "10.0.0.5/24"}}}),
    "network.static.dns": (["dns.example"], {"network": {"static": {"address": "10.0.0.5/24"}}}),
    "timezone": ("/etc/shadow", {}),
    "locale": ("en US", {}),
    "hostname_pattern": ("pi", {}),
    "devices[].hostname": ("-pi", {}),
    "devices[].labels": (["no-equals"], {}),
    "devices[].taints": (["x"], {}),
    "devices[].address": ("10.0.0.255/24", {}),
    "devices[].gateway": ("10.1.0.1", {"devices": [{"address": "10.0.0.5/24"}]}),
    "devices[].dns": (["x"], {"devices": [{"address": "10.0.0.5/24"}]}),
    "devices[].wifi.ssid": ("é" * 17, {"devices": [{"wifi": WIFI}]}),
    "devices[].wifi.password_env": ("a-b", {"devices": [{"wifi": WIFI}]}),
    "devices[].wifi.country": ("DEU", {"devices": [{"wifi": WIFI}]}),
    "devices[].wifi.hidden": (1, {"devices": [{"wifi": WIFI}]}),
    "devices[].role": ("boss", {}),
    "devices[].k3s_config": ({"kubelet-args": ["x"]}, {}),
    "devices[].node_ip": (["x"], {}),
    "devices[].node_external_ip": ([], {}),
    "devices[].flannel_iface": ("", {}),
    "devices[].advertise_address": ("srv", {}),
    "devices[].board": ("rpi4", {}),
    "devices_file": ("", {}),
    "output.dir": (5, {}),
    "output.formats": (["iso"], {}),
    "output.bmap": ("y", {}),
    "output.size": ("4X", {}),
    "agent.backoff_cap": (0, {}),
    "agent.clock_sync_timeout": (-1, {}),
    "agent.recheck_interval": (0, {}),
    "agent.start_timeout": (86401, {}),
    "seed.format": ("windows", {}),
    "seed.keyboard": ("DE", {}),
    "hardware.i2c": ("y", {}),
    "hardware.spi": ("y", {}),
    "hardware.serial": ("y", {}),
    "hardware.onewire": ("y", {}),
    "hardware.usb_gadget": ("y", {}),
    "hardware.pi5_4k_pages": ("y", {}),
    "hardware.wifi_country": ("de", {}),
    "hardware.board": ("pi6", {}),
    "boot.config_txt": ({"all": ["no equals sign"]}, {}),
}


def test_every_schema_key_has_a_bad_value_case() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    keys = schema_keys(schema, schema["$defs"])
    assert len(keys) > 60, keys
    assert sorted(set(keys) - set(CASES)) == [], "schema keys without a bad-value case"
    assert sorted(set(CASES) - set(keys)) == [], "cases for keys the schema does not have"


@pytest.mark.parametrize("path", sorted(CASES))
def test_bad_value_is_one_line_naming_the_key(tmp_path: Path, path: str) -> None:
    value, extra = CASES[path]
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(config_with(path, value, extra)))
    with pytest.raises(UserError) as info:
        load(tmp_path / "fleet.yaml")
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    where = concrete(path)
    assert (
        f"fleet.yaml: {where}" in message or f"fleet.yaml: {where.rsplit('.', 1)[0]}" in message
    ), message


def test_the_valid_config_loads(tmp_path: Path) -> None:
    """The cases differ from a config that loads only in their bad value."""
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(VALID))
    assert load(tmp_path / "fleet.yaml").devices[0].hostname == "pi-1"


# -- hostile fleet and inventory files, through the real CLI --------------------------------

BASE = yaml.safe_dump({k: v for k, v in VALID.items() if k != "devices"})


def one_line_exit_2(tmp_path: Path, *needles: str) -> str:
    proc = pifleet("build", "fleet.yaml", cwd=tmp_path, timeout=30)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pifleet: error: "), proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (BASE + "users: " + "[" * 1000 + "]" * 1000 + "\n", ["fleet.yaml", "nested too deeply"]),
        (BASE + "x-deep: " + "[" * 100 + "]" * 100 + "\n", ["x-deep[0][0]", "levels deep"]),
        (BASE + "? [a, b]\n: 1\n", ["fleet.yaml:", "a list or mapping cannot be a key"]),
        (BASE + '"a\\nb": 1\n', ["fleet.yaml: 'a\\nb': control or invisible character"]),
        (BASE + 'cluster2: {"x\\ny": 1}\n', ["cluster2.'x\\ny'"]),
    ],
    ids=["nested-1000", "nested-100", "list-key", "newline-key", "nested-newline-key"],
)
def test_hostile_fleet_files(tmp_path: Path, text: str, needles: list[str]) -> None:
    (tmp_path / "fleet.yaml").write_text(text)
    one_line_exit_2(tmp_path, *needles)


def test_a_fifo_as_fleet_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fleet.yaml")
    one_line_exit_2(tmp_path, "fleet.yaml: is a FIFO")


@pytest.mark.parametrize(
    ("name", "data", "needles"),
    [
        ("devices.yaml", "- hostname: pi-1\n  hostname: pi-2\n",
         ["devices.yaml:2: YAML error: duplicate key 'hostname' (first on line 1)"]),
        ("devices.yaml", "- hostname: pi-1\n  labels: [a\n- x: : y\n",
         ["devices.yaml:3: YAML error: expected ',' or ']'"]),
        ("devices.yaml", "- {hostname: pi-1, ? [a]: 1}\n", ["devices.yaml:1", "cannot be a key"]),
        ("devices.csv", "hostname,labels\npi-0,a=b\npi-1," + "a" * (140 * 1024) + "\n",
         ["devices.csv:3: CSV error: field larger than field limit"]),
        ("devices.fifo", None, ["devices.fifo: is a FIFO"]),
    ],
    ids=["yaml-duplicate-key", "yaml-syntax", "yaml-list-key", "csv-huge-field", "fifo"],
)  # fmt: skip
def test_hostile_inventories(
    tmp_path: Path, name: str, data: str | None, needles: list[str]
) -> None:
    if data is None:
        os.mkfifo(tmp_path / name)
    else:
        (tmp_path / name).write_text(data)
    (tmp_path / "fleet.yaml").write_text(BASE + f"devices_file: {name}\n")
    one_line_exit_2(tmp_path, *needles)


# -- values that parse but cannot be what they claim ----------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        TEST_TOKEN + "\n" + TEST_TOKEN + "\n",
        TEST_TOKEN + "\0\n",
        "K10" + "7e" * 32 + "::server:a\0b\n",
    ],
    ids=["two-lines", "nul-after", "nul-inside"],
)
def test_token_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    token = tmp_path / "token"
    token.write_text(text)
    token.chmod(0o600)
    (tmp_path / "fleet.yaml").write_text(BASE)
    config = load(tmp_path / "fleet.yaml")
    secret = TEST_TOKEN.rsplit(":", 1)[1]
    for read in (lambda: read_token(config.cluster, "fleet.yaml"), lambda: read_token_file(token)):
        with pytest.raises(UserError) as info:
            read()
        assert "token holds" in str(info.value) and secret not in str(info.value)
        assert "\n" not in str(info.value)
    if "\0" in text:
        return  # an environment variable cannot hold a NUL byte
    monkeypatch.setenv("PIFLEET_TEST_TOKEN", text)
    from_env = replace(config.cluster, token_file=None, token_env="PIFLEET_TEST_TOKEN")
    with pytest.raises(UserError, match=r"cluster\.token_env: the token holds"):
        read_token(from_env, "fleet.yaml")


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("10.0.0.0/24", "10.0.0.0 is the network address of 10.0.0.0/24"),
        ("10.0.0.255/24", "10.0.0.255 is the broadcast address of 10.0.0.0/24"),
        ("2001:db8::/64", "2001:db8:: is the network address of 2001:db8::/64"),
    ],
)
def test_device_address_is_a_host_address(tmp_path: Path, address: str, problem: str) -> None:
    config = {**VALID, "devices": [{"hostname": "pi-1", "address": address}]}
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UserError, match=f"devices\\[0\\].address: {problem}"):
        load(tmp_path / "fleet.yaml")


@pytest.mark.parametrize("address", ["10.0.0.1/24", "10.0.0.0/31", "10.0.0.7/32", "2001:db8::1/64"])
def test_host_addresses_are_accepted(tmp_path: Path, address: str) -> None:
    config = {**VALID, "devices": [{"hostname": "pi-1", "address": address}]}
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(config))
    static = load(tmp_path / "fleet.yaml").devices[0].static
    assert static is not None and static.address == address
