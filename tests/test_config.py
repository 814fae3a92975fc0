"""Fleet config: schema, defaults, and one clear line per mistake."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from builder.config.fleet import load
from builder.config.schema import SCHEMA_PATH
from builder.config.values import parse_size
from builder.util.errors import UserError
from tests.conftest import fleet_yaml

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return path


def test_schema_is_a_valid_json_schema() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("example", sorted((REPO / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_bundled_examples_load(example: Path) -> None:
    config = load(example)
    assert config.name


def test_defaults_are_documented_and_applied(tmp_path: Path) -> None:
    config = load(write(tmp_path, "name: f\ncluster: {server: 'https://k:6443', token_env: TOK}\n"))
    assert config.arch == "arm64"
    assert config.base.name == "raspios-trixie-lite-arm64"
    assert config.k3s.channel == "stable"
    assert config.cluster.role == "agent"
    assert config.hostname_pattern == "pi-{serial}"
    assert config.output.formats == ("img",) and config.output.bmap
    assert config.output.dir == tmp_path / "out"
    assert config.timezone == "Etc/UTC" and config.locale == "en_US.UTF-8"
    schema = json.loads(SCHEMA_PATH.read_text())
    for key in ("arch", "timezone", "locale", "hostname_pattern"):
        assert "default" in schema["properties"][key], key


# Where each `$defs` entry that has defaults is read in MINIMAL; a new one must be added here.
DEFS_AT = {"wifi": "network.wifi", "static": "network.static"}
MINIMAL = (  # a fleet file giving only what every nested default needs around it
    "name: f\ncluster: {server: 'https://k:6443', token_env: TOK}\nusers: [{name: ops}]\n"
    "network: {wifi: {ssid: edge, country: DE}, static: {address: 10.0.0.5/24}}\n"
)

KUBEADM = (  # kubernetes.* defaults only exist in a kubeadm fleet
    "name: f\ncluster: {kind: kubeadm, server: 'k:6443', token_env: TOK, ca_cert_hashes: ['sha256:"
    + "7e" * 32
    + "']}\nkubernetes: {version: v1.34.1}\nusers: [{name: ops}]\n"
)


def kubeadm_config(tmp_path: Path) -> Any:
    (tmp_path / "kubeadm").mkdir(exist_ok=True)
    return load(write(tmp_path / "kubeadm", KUBEADM))


def schema_defaults() -> list[tuple[str, Any]]:
    """(FleetConfig attribute path such as 'users[0].shell', default) for every schema default."""
    found: list[tuple[str, Any]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, list):
            for sub in node:
                walk(sub, path)
        if not isinstance(node, dict):
            return
        if "default" in node:
            found.append((path, node["default"]))
        for key, sub in node.items():
            if key == "properties":
                for name, prop in sub.items():
                    walk(prop, f"{path}.{name}" if path else name)
            elif key == "items":
                walk(sub, f"{path}[0]")
            elif key == "$defs":
                for name, definition in sub.items():
                    walk(definition, DEFS_AT.get(name, f"$defs.{name}"))
            elif key not in ("default", "examples"):
                walk(sub, path)

    walk(json.loads(SCHEMA_PATH.read_text()), "")
    return found


def attribute(config: object, path: str) -> Any:
    """config.users[0].shell for 'users[0].shell'."""
    value: Any = config
    for part in path.replace("[0]", ".0").split("."):
        value = value[int(part)] if part.isdigit() else getattr(value, part)
    return value


def as_read(default: Any) -> Any:
    """A schema default as FleetConfig holds it: lists and mappings become tuples."""
    if isinstance(default, list):
        return tuple(as_read(v) for v in default)
    if isinstance(default, dict):
        return tuple(sorted(default.items()))
    return default


def test_every_schema_default_reaches_fleet_config(tmp_path: Path) -> None:
    full = load(write(tmp_path, MINIMAL))
    bare = load(write(tmp_path, "name: f\ncluster: {server: 'https://k:6443', token_env: TOK}\n"))
    defaults = schema_defaults()
    assert ("users[0].shell", "/bin/bash") in defaults
    assert ("network.wifi.hidden", False) in defaults
    assert not [p for p, _ in defaults if p.startswith("$defs.")], "add it to DEFS_AT"
    kubeadm, wrong = kubeadm_config(tmp_path), []
    for path, default in defaults:
        source = full if "." in path or "[" in path else bare
        got = attribute(kubeadm if path.startswith("kubernetes.") else source, path)
        expected = tmp_path / default if isinstance(got, Path) else as_read(default)
        if got != expected:
            wrong.append((path, default, got))
    assert wrong == []


def test_dataclass_defaults_agree_with_the_schema(tmp_path: Path) -> None:
    """Dataclass defaults exist only so tests can build values by hand; they say what the schema says."""
    config, kubeadm = load(write(tmp_path, MINIMAL)), kubeadm_config(tmp_path)
    checked, wrong = [], []
    for path, default in schema_defaults():
        owner_path, _, name = path.rpartition(".")
        source = kubeadm if path.startswith("kubernetes.") else config
        owner = attribute(source, owner_path) if owner_path else source
        field = {f.name: f for f in fields(owner)}.get(name)
        if field is not None and field.default is not MISSING:
            checked.append(path)
            if field.default != as_read(default):
                wrong.append((path, default, field.default))
    assert "k3s.release_url" in checked and "hardware.i2c" in checked and "cluster.proxy" in checked
    assert "kubernetes.release_url" in checked
    assert wrong == []


def test_full_config_types(tmp_path: Path) -> None:
    text = fleet_yaml(
        devices="devices:\n  - {hostname: pi-001, labels: {zone: a}, address: 10.0.0.11/24, gateway: 10.0.0.1, dns: [1.1.1.1]}\n  - hostname: pi-002",
        network="network:\n  wifi: {ssid: edge, country: DE, password_env: PSK}",
    )
    config = load(write(tmp_path, text))
    assert config.cluster.node_labels == ("site=berlin",)
    assert config.cluster.node_taints == ("edge=true:NoSchedule",)
    assert config.cluster.token_file == tmp_path / "token"
    assert config.devices[0].static is not None and config.devices[0].static.gateway == "10.0.0.1"
    assert config.devices[0].labels == ("zone=a",)
    assert config.network.wifi is not None and config.network.wifi.country == "DE"
    assert config.users[0].sudo


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (fleet_yaml(extra="colour: blue"), "fleet.yaml: colour: unknown key"),
        (
            fleet_yaml(cluster="cluster: {server: 'https://k', token_file: t, nodes: 3}"),
            "cluster.nodes: unknown key",
        ),
        (fleet_yaml(arch="arch: x86"), "arch: must be one of 'arm64', 'armhf', got 'x86'"),
        (
            fleet_yaml(cluster="cluster: {server: 'http://x', token_file: t}"),
            "cluster.server: must be an https:// URL, got 'http://x'",
        ),
        (
            fleet_yaml(cluster="cluster: {server: 'https://k', token_file: t, role: boss}"),
            "cluster.role: must be one of",
        ),
        (
            fleet_yaml(cluster="cluster: {server: 'https://k'}"),
            "cluster: give exactly one of token_file or token_env",
        ),
        (fleet_yaml(users="users: {name: ops}"), "users: must be a list, got"),
        (
            fleet_yaml(users="users: [{name: ops, sudo: 'yes'}]"),
            "users[0].sudo: must be true or false, got 'yes'",
        ),
        (
            fleet_yaml(devices="devices: [{hostname: Pi_7}]"),
            "devices[0].hostname: must be an RFC 1123 host name, got 'Pi_7'",
        ),
        (
            fleet_yaml(devices="devices: [{hostname: pi-1}, {hostname: pi-2}, {hostname: pi-1}]"),
            "devices[2].hostname: duplicate host name 'pi-1' (also devices[0])",
        ),
        (
            fleet_yaml(devices="devices: [{hostname: pi-1, address: 10.0.0.300/24}]"),
            "devices[0].address: must be an address with prefix",
        ),
        (
            fleet_yaml(
                devices="devices: [{hostname: pi-1, address: 10.0.0.3/24, gateway: 10.9.0.1}]"
            ),
            "devices[0].gateway: 10.9.0.1 is not in 10.0.0.0/24",
        ),
        (
            fleet_yaml(cluster="cluster: {server: 'https://k', token_file: t, node_taints: [bad]}"),
            "cluster.node_taints[0]: must be key[=value]:NoSchedule",
        ),
        (
            fleet_yaml(base="base: {url: 'https://x/y.img.xz'}"),
            "base.sha256: required with base.url",
        ),
        (
            fleet_yaml(k3s="k3s: {version: '1.33'}"),
            "k3s.version: must be a K3s release such as v1.33.5+k3s1, got '1.33'",
        ),
        (
            fleet_yaml(k3s="k3s: {version: v1.33.5+k3s1, binary: ./k3s}"),
            "k3s: give only one of version, channel or binary",
        ),
        (
            fleet_yaml(extra="hostname_pattern: EDGE-{serial}"),
            "hostname_pattern: must be lowercase letters, digits",
        ),
        (
            fleet_yaml(output="output: {formats: [img.bz2]}"),
            "output.formats[0]: must be one of 'img', 'img.xz', 'img.zst', got 'img.bz2'",
        ),
        ("name: a\nname: b\n", "fleet.yaml:2: YAML error: duplicate key 'name' (first on line 1)"),
        ("name: [unclosed\n", "fleet.yaml:2: YAML error"),
        ("- just\n- a list\n", "fleet.yaml: expected a mapping of settings at the top level"),
    ],
)
def test_bad_config_gives_one_clear_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UserError) as info:
        load(path)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert message.startswith(str(path))


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="fleet config not found"):
        load(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="fleet config is empty"):
        load(write(tmp_path, "# nothing\n"))


def test_sizes() -> None:
    assert parse_size("4G") == 4 << 30
    assert parse_size("3500M") == 3500 << 20
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("1024") == 1024
