"""A per-device build of a cluster pifleet creates: 3 servers (embedded etcd) and 2 agents,
every file read back from the real image files with debugfs and mtools.

Checks, per image: the custom CA layout at K3s's paths in the ROOT filesystem (keys 0600,
directories 0700, bytes as `cluster init` wrote them), the token per role, the device
file's role / cluster-init flag / tls-san / server, the config.yaml the agent writes from
that seed, and that the raw bytes of the FAT boot partition hold no key and no token.
"""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from firstboot import joinconfig, roles
from firstboot.paths import Root
from tests.cluster_fleet import AGENTS, CREATE, DEVICES, SERVERS
from tests.conftest import fleet_yaml, pifleet
from tests.image_read import debugfs, fat_read, partitions, squeezed

TLS = "/var/lib/rancher/k3s/server/tls"


def inode_mode(image: Path, path: str) -> int | None:
    """Permission bits of `path` in the image's root filesystem, or None when absent."""
    out = debugfs(image, f"stat {path}")
    for line in out.splitlines():
        if line.startswith("Inode:") and "Mode:" in line:
            return int(line.split("Mode:")[1].split()[0], 8) & 0o7777
    return None


def root_bytes(image: Path, path: str, tmp: Path) -> bytes:
    dest = tmp / "dumped"
    dest.unlink(missing_ok=True)
    debugfs(image, f"dump {path} {dest}")
    return dest.read_bytes() if dest.exists() else b""  # debugfs: absent path, no file


def boot_partition(image: Path) -> bytes:
    part = partitions(image)[0]
    with open(image, "rb") as f:
        f.seek(part["start"] * 512)
        return f.read(part["size"] * 512)


def secret_needles(cluster: Path) -> list[bytes]:
    """Bytes that must never be on the FAT: every key's base64 lines, every token password."""
    needles = []
    for key in (cluster / "tls").rglob("*.key"):
        lines = key.read_bytes().splitlines()
        needles += [line for line in lines[1:-1] if len(line) >= 40][:3]
    for name in ("token", "agent-token"):
        needles.append(((cluster / name).read_text().strip().rsplit(":", 1)[1]).encode())
    return needles


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.layouts import LAYOUTS, make_pi_image

    fleet = tmp_path_factory.mktemp("cluster-fleet")
    make_pi_image(fleet / "base.img", LAYOUTS["trixie"], "arm64")
    (fleet / "fleet.yaml").write_text(fleet_yaml(cluster=CREATE, devices=DEVICES))
    before = pifleet("build", "fleet.yaml", "--per-device", cwd=fleet)
    assert before.returncode == 2, f"a build before cluster init is bad input: {before.stderr}"
    assert before.stderr.count("\n") == 1, f"it says so in one line: {before.stderr}"
    assert "run `pifleet cluster init" in before.stderr, "the line names the command to run"
    assert "Traceback" not in before.stderr, "no traceback"
    made = pifleet("cluster", "init", "fleet.yaml", cwd=fleet)
    assert made.returncode == 0, f"cluster init succeeds: {made.stderr}"
    done = pifleet("build", "fleet.yaml", "--per-device", cwd=fleet)
    assert done.returncode == 0, f"the build after cluster init succeeds: {done.stderr}"
    for needle in secret_needles(fleet / "cluster"):
        assert needle.decode() not in done.stdout + done.stderr, "no cluster secret is printed"
    return fleet


def test_servers_carry_the_ca_layout_and_the_server_token(built: Path, tmp_path: Path) -> None:
    cluster = built / "cluster"
    tls_files = sorted(p for p in (cluster / "tls").rglob("*") if p.is_file())
    assert len(tls_files) == 22
    for name in SERVERS:
        image = built / "out" / f"{name}.img"
        for directory in ("/var/lib/rancher/k3s/server", TLS, f"{TLS}/etcd"):
            assert inode_mode(image, directory) == 0o700, (name, directory)
        for src in tls_files:
            rel = src.relative_to(cluster / "tls").as_posix()
            assert root_bytes(image, f"{TLS}/{rel}", tmp_path) == src.read_bytes(), (name, rel)
            want = 0o600 if src.suffix == ".key" else 0o644
            assert inode_mode(image, f"{TLS}/{rel}") == want, (name, rel)
        assert root_bytes(image, "/etc/pifleet/token", tmp_path) == (cluster / "token").read_bytes()
        agent_token = (cluster / "agent-token").read_bytes()
        assert root_bytes(image, "/etc/rancher/k3s/agent-token", tmp_path) == agent_token
        for secret in ("/etc/pifleet/token", "/etc/rancher/k3s/agent-token"):
            assert inode_mode(image, secret) == 0o600, (name, secret)
        assert inode_mode(image, "/usr/local/bin/k3s-uninstall.sh") == 0o755


def test_agents_carry_the_agent_token_and_no_ca(built: Path, tmp_path: Path) -> None:
    cluster = built / "cluster"
    for name in AGENTS:
        image = built / "out" / f"{name}.img"
        token = root_bytes(image, "/etc/pifleet/token", tmp_path)
        assert token == (cluster / "agent-token").read_bytes()
        assert token.startswith(b"K10" + (cluster / "token").read_bytes()[3:67] + b"::node:")
        assert inode_mode(image, "/etc/pifleet/token") == 0o600
        assert inode_mode(image, "/var/lib/rancher/k3s/server") is None
        assert inode_mode(image, "/etc/rancher/k3s/agent-token") is None


def test_seed_says_role_init_and_names(built: Path) -> None:
    seen = {}
    for name in SERVERS + AGENTS:
        raw = fat_read(built / "out" / f"{name}.img", "/pifleet/device.json")
        seen[name] = joinconfig.load_device_config(raw, name)
    sans = ["edge-srv-1", "edge-srv-2", "edge-srv-3"]
    assert seen["edge-srv-1"].role == "server" and seen["edge-srv-1"].cluster_init is True
    assert seen["edge-srv-1"].server is None and seen["edge-srv-1"].tls_san == sans
    for name in SERVERS[1:]:
        assert seen[name].role == "server" and seen[name].cluster_init is False
        assert seen[name].server == "https://edge-srv-1:6443" and seen[name].tls_san == sans
    for name in AGENTS:
        assert seen[name].role == "agent" and seen[name].cluster_init is None
        assert seen[name].tls_san == [] and seen[name].server is None


def test_config_yaml_per_role_from_the_image_seed(built: Path, tmp_path: Path) -> None:
    """The agent's own config.yaml writer, fed each image's join.json and device.json."""
    root = Root(tmp_path)
    configs = {}
    for name in SERVERS + AGENTS:
        image = built / "out" / f"{name}.img"
        join = joinconfig.load_join_config(root_bytes(image, joinconfig.JOIN_CONFIG_PATH, tmp_path))
        device = joinconfig.load_device_config(fat_read(image, "/pifleet/device.json"), name)
        agent_token = root_bytes(image, "/etc/rancher/k3s/agent-token", tmp_path)
        (tmp_path / "etc/rancher/k3s").mkdir(parents=True, exist_ok=True)
        marker = tmp_path / "etc/rancher/k3s/agent-token"
        marker.unlink(missing_ok=True)
        if agent_token:
            marker.write_bytes(agent_token)
        server = device.server or join.server
        configs[name] = roles.k3s_config(root, join, device, server, name).decode()
    first = configs["edge-srv-1"]
    assert "cluster-init: true\n" in first and "\nserver:" not in first
    assert 'agent-token-file: "/etc/rancher/k3s/agent-token"' in first
    assert 'tls-san:\n  - "edge-srv-1"\n  - "edge-srv-2"\n  - "edge-srv-3"\n' in first
    for name in SERVERS[1:]:
        text = configs[name]
        assert 'server: "https://edge-srv-1:6443"' in text and "cluster-init" not in text
        assert (
            f'node-name: "{name}"' in text and 'token-file: "/etc/rancher/k3s/join-token"' in text
        )
        assert "tls-san:" in text and "agent-token-file" in text
    for name in AGENTS:
        text = configs[name]
        assert 'server: "https://edge-srv-1:6443"' in text
        assert "cluster-init" not in text and "tls-san" not in text and "agent-token" not in text


def test_the_squeezed_search_finds_what_the_raw_one_finds() -> None:
    """The scan below searches squeezed partitions: a needle planted among NUL runs (at the
    edges too) is still found, and none is made by joining data across a NUL run."""
    needle = b"MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQ"
    raw = bytes(4096) + needle + bytes(8192) + b"abc" + bytes(3) + b"def" + bytes(100)
    assert needle in squeezed(raw), "a planted needle is found"
    assert needle in squeezed(needle + bytes(10)) and needle in squeezed(bytes(10) + needle)
    assert b"abcdef" not in squeezed(raw), "no needle made across a NUL run"
    assert len(squeezed(raw)) < len(needle) + 20, "the NUL runs are cut"


def test_no_key_or_token_on_the_boot_partition(built: Path) -> None:
    needles = secret_needles(built / "cluster")
    assert len(needles) > 20
    assert all(b"\0" not in needle for needle in needles), "squeezed() needs NUL-free needles"
    for name in SERVERS + AGENTS:
        raw = squeezed(boot_partition(built / "out" / f"{name}.img"))
        for needle in needles:
            assert needle not in raw, name
    for name in SERVERS:
        assert json.loads(fat_read(built / "out" / f"{name}.img", "/pifleet/device.json"))


def test_cluster_folder_stays_private(built: Path) -> None:
    assert stat.S_IMODE((built / "cluster").stat().st_mode) == 0o700
    out = subprocess.run(["ls", str(built / "out")], capture_output=True, text=True).stdout
    assert all(f"{n}.img" in out for n in SERVERS + AGENTS)


def test_personalize_cli_makes_the_same_server(built: Path, tmp_path: Path) -> None:
    """`pifleet personalize` of one server from the golden image: the same root files."""
    dest = tmp_path / "srv-2.img"
    done = pifleet(
        "personalize", "out/edge-fleet.img", "--config", "fleet.yaml", "--device", "edge-srv-2",
        "-o", str(dest), cwd=built,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    key = (built / "cluster" / "tls" / "server-ca.key").read_bytes()
    assert root_bytes(dest, f"{TLS}/server-ca.key", tmp_path) == key
    assert inode_mode(dest, f"{TLS}/server-ca.key") == 0o600
    seed = joinconfig.load_device_config(fat_read(dest, "/pifleet/device.json"), "srv-2")
    assert (seed.role, seed.cluster_init, seed.server) == (
        "server", False, "https://edge-srv-1:6443",
    )  # fmt: skip
    golden = built / "out" / "edge-fleet.img"
    assert inode_mode(golden, TLS) is None, "the golden image stays an agent image"
