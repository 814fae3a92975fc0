"""`cluster.registries`, `system_default_registry` and `embedded_registry` (issue 24, item 10):
K3s's registries.yaml written into a real build, 0600 from its first byte, the password never
in what the build prints or in an output besides the image, and each bad value one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from firstboot import joinconfig
from tests.conftest import fleet_yaml, pifleet
from tests.image_read import debugfs, root_read

PASSWORD = "s3cret-Registry-pw-7f3a"
CLUSTER = (
    "cluster:\n  server: https://k3s.example.net:6443\n  token_file: token\n  role: {role}\n"
    "  system_default_registry: registry.lan:5000\n  embedded_registry: true\n"
    "  registries:\n"
    "    mirrors:\n"
    "      docker.io:\n        endpoint: ['https://registry.lan:5000']\n"
    "        rewrite: {{'^rancher/(.*)': 'mirror/rancher/$1'}}\n"
    "      registry.k8s.io: {{}}\n"
    "    configs:\n"
    "      registry.lan:5000:\n"
    "        auth: {{username: pi, password_file: registry-password}}\n"
    "        tls: {{ca_file: lan-ca.crt, cert_file: client.crt, key_file: client.key}}\n"
)


def write_fleet(fleet_dir: Path, role: str = "server", cluster: str = "") -> None:
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(cluster=cluster or CLUSTER.format(role=role)))
    for name, data, mode in (("registry-password", PASSWORD + "\n", 0o600),
                             ("lan-ca.crt", "CA PEM\n", 0o644), ("client.crt", "CERT PEM\n", 0o644),
                             ("client.key", "KEY PEM\n", 0o600)):  # fmt: skip
        (fleet_dir / name).write_text(data)
        (fleet_dir / name).chmod(mode)


def mode_of(image: Path, path: str) -> int:
    found = re.search(r"Mode:\s+(\d+)", debugfs(image, f"stat {path}"))
    assert found, path
    return int(found.group(1), 8)


def test_registries_yaml_is_written_private_and_the_password_stays_in_it(fleet_dir: Path) -> None:
    write_fleet(fleet_dir)
    built = pifleet("build", "fleet.yaml", cwd=fleet_dir)
    assert built.returncode == 0, built.stderr
    image = fleet_dir / "out/edge-fleet.img"
    text = root_read(image, "/etc/rancher/k3s/registries.yaml", fleet_dir)
    assert mode_of(image, "/etc/rancher/k3s/registries.yaml") == 0o600
    certs = "/etc/rancher/k3s/registries.d/registry.lan_5000"
    assert yaml.safe_load(text) == {
        "mirrors": {
            "docker.io": {"endpoint": ["https://registry.lan:5000"],
                          "rewrite": {"^rancher/(.*)": "mirror/rancher/$1"}},
            "registry.k8s.io": {"endpoint": []},
        },
        "configs": {"registry.lan:5000": {
            "auth": {"username": "pi", "password": PASSWORD},
            "tls": {"ca_file": f"{certs}/ca.crt", "cert_file": f"{certs}/client.crt",
                    "key_file": f"{certs}/client.key"},
        }},
    }  # fmt: skip
    assert root_read(image, f"{certs}/client.key", fleet_dir) == b"KEY PEM\n"
    assert (mode_of(image, f"{certs}/client.key"), mode_of(image, f"{certs}/ca.crt")) == (
        0o600, 0o644,
    )  # fmt: skip
    raw = root_read(image, "/etc/pifleet/join.json", fleet_dir)
    server = json.loads(raw)["k3s_config"]["server"]
    assert joinconfig.load_join_config(raw).k3s_config["server"] == server  # the device reads it
    assert server["system-default-registry"] == "registry.lan:5000"
    assert server["embedded-registry"] is True
    assert PASSWORD not in built.stdout + built.stderr
    for output in (fleet_dir / "out").rglob("*"):
        if output.is_file() and not output.name.endswith(".img"):
            assert PASSWORD.encode() not in output.read_bytes(), output


BAD = {
    "scheme": ("endpoint: ['https://registry.lan:5000']", "endpoint: ['ftp://r.lan']",
               "cluster.registries.mirrors.docker.io.endpoint: 'ftp://r.lan': K3s takes http"),
    "rewrite": ("'^rancher/(.*)'", "'^rancher/(.*'", "cluster.registries.mirrors.docker.io.rewrite:"),
    "key-only": ("cert_file: client.crt, ", "", "key_file needs a cert_file too"),
    "unknown": ("auth: {username: pi,", "auth: {user: pi,", "cluster.registries.configs.registry.lan:5000.auth.user: unknown key"),
    "both": ("password_file: registry-password", "password_file: registry-password, password_env: PW",
             "give one of password_file or password_env"),
    "host": ("      registry.lan:5000:\n", "      'registry lan':\n", "not a registry host"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_registries_are_one_line(fleet_dir: Path, case: str) -> None:
    old, new, message = BAD[case]
    text = CLUSTER.format(role="server")
    assert old in text
    write_fleet(fleet_dir, cluster=text.replace(old, new))
    done = pifleet("build", "fleet.yaml", cwd=fleet_dir)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (fleet_dir / "out/edge-fleet.img").exists()


def test_a_password_file_others_can_read_is_refused_and_never_shown(fleet_dir: Path) -> None:
    write_fleet(fleet_dir)
    (fleet_dir / "registry-password").chmod(0o644)
    done = pifleet("build", "fleet.yaml", cwd=fleet_dir)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert "cluster.registries.configs.registry.lan:5000.auth.password_file" in line
    assert "chmod 600" in line and PASSWORD not in done.stdout + done.stderr


def test_server_settings_on_a_fleet_without_servers_are_refused(fleet_dir: Path) -> None:
    write_fleet(fleet_dir, role="agent")
    done = pifleet("build", "fleet.yaml", cwd=fleet_dir)
    assert done.returncode == 2, done.stderr
    assert "cluster.system_default_registry: a K3s server setting" in done.stderr.strip()
