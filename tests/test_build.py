"""`pifleet build` end to end on synthetic Pi images, read back with independent tools."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from builder import version
from tests.builds import build_ok
from tests.cloudinit_render import networkd_render
from tests.conftest import TEST_TOKEN, fleet_yaml, pifleet
from tests.image_read import debugfs, fat_names, fat_read, root_read, root_spec, sha256
from tests.layouts import elf_for


def test_build_trixie_arm64(fleet_dir: Path, tmp_path: Path) -> None:
    base = fleet_dir / "base.img"
    base_sum = sha256(base)
    build_ok(fleet_dir)
    image = fleet_dir / "out" / "edge-fleet.img"
    assert sha256(base) == base_sum, "the base must never be modified"

    cmdline = fat_read(image, "/cmdline.txt").decode()
    assert cmdline.count("\n") == 1, f"cmdline.txt is not one line: {cmdline!r}"
    assert cmdline.endswith("\n"), f"cmdline.txt does not end its line: {cmdline!r}"
    words = cmdline.split()
    assert words.count("cgroup_memory=1") == 1, f"cgroup_memory=1 not once: {cmdline}"
    assert words.count("cgroup_enable=memory") == 1, f"cgroup_enable=memory not once: {cmdline}"
    assert "root=PARTUUID=5e3da1f0-02" in words, f"cmdline.txt lost its root: {cmdline}"
    assert "cfg80211.ieee80211_regdom=GB" in words, f"no Wi-Fi country GB: {cmdline}"

    k3s = debugfs(image, "stat /usr/local/bin/k3s")
    assert "Type: regular    Mode:  0755" in k3s, "k3s is not a regular file, 0755"
    assert "User:     0   Group:     0" in k3s, "k3s is not root's"
    assert root_read(image, "/usr/local/bin/k3s", tmp_path) == elf_for("arm64").read_bytes(), (
        "k3s is not the given binary"
    )
    for tool in ("kubectl", "crictl", "ctr"):
        assert 'Fast link dest: "k3s"' in debugfs(image, f"stat /usr/local/bin/{tool}"), (
            f"{tool} is not a link to k3s"
        )

    unit = root_read(image, "/etc/systemd/system/pifleet-firstboot.service", tmp_path).decode()
    assert "ExecStart=/usr/bin/python3 -m firstboot run" in unit, "the agent unit runs no agent"
    wants = debugfs(
        image, "stat /etc/systemd/system/multi-user.target.wants/pifleet-firstboot.service"
    )
    assert 'Fast link dest: "/etc/systemd/system/pifleet-firstboot.service"' in wants, (
        "the agent unit is not enabled"
    )
    # Secrets off the boot partition on every boot, after cloud-init read them, before network.
    custody = root_read(image, "/etc/systemd/system/pifleet-custody.service", tmp_path).decode()
    assert "ExecStart=/usr/bin/python3 -m firstboot custody" in custody, "custody runs no custody"
    assert "Before=network-pre.target" in custody, "custody does not run before the network"
    assert "After=local-fs.target cloud-init-local" in custody, (
        "custody does not run after cloud-init's local stage"
    )
    assert "RequiresMountsFor=/boot/firmware /var/lib" in custody, (
        "custody does not wait for the boot partition and /var/lib"
    )
    linked = debugfs(
        image, "stat /etc/systemd/system/multi-user.target.wants/pifleet-custody.service"
    )
    assert 'Fast link dest: "/etc/systemd/system/pifleet-custody.service"' in linked, (
        "the custody unit is not enabled"
    )
    agent_init = root_read(image, "/usr/lib/pifleet/firstboot/__init__.py", tmp_path)
    source = (Path(__file__).parent.parent / "firstboot/__init__.py").read_bytes()
    assert agent_init == source + f'\n__version__ = "{version()}"\n'.encode(), (
        "the agent's __init__ is not the source with pyproject's version"
    )

    join = json.loads(root_read(image, "/etc/pifleet/join.json", tmp_path))
    assert join["server"] == "https://k3s.example.net:6443", f"join.json's server: {join}"
    assert join["boot_dir"] == "/boot/firmware", f"join.json's boot_dir: {join}"
    # The user's labels first, then pifleet's own (for `pifleet status`).
    assert join["node_labels"] == [
        "site=berlin", "pifleet/fleet=edge-fleet", "pifleet/agent=0.1.0"
    ], f"join.json's labels, not the user's then pifleet's: {join['node_labels']}"  # fmt: skip
    assert TEST_TOKEN not in json.dumps(join), "join.json holds the token"
    token_stat = debugfs(image, "stat /etc/pifleet/token")
    assert "Mode:  0600" in token_stat, "/etc/pifleet/token is not 0600"
    assert "User:     0   Group:     0" in token_stat, "/etc/pifleet/token is not root's"
    assert root_read(image, "/etc/pifleet/token", tmp_path).decode().strip() == TEST_TOKEN, (
        "/etc/pifleet/token is not the token"
    )

    meta = yaml.safe_load(fat_read(image, "/meta-data"))
    assert meta["instance-id"].startswith("pifleet-"), f"meta-data's instance-id: {meta}"
    user_data = fat_read(image, "/user-data").decode()
    assert user_data.startswith("#cloud-config\n"), "user-data has no #cloud-config line"
    assert yaml.safe_load(user_data)["users"][0]["name"] == "ops", "user-data's user is not ops"
    assert "::/ssh" in fat_names(image).split(), "sshd is switched on for users with keys"
    e2fsck = subprocess.run(["e2fsck", "-fn", root_spec(image)], capture_output=True, text=True)
    assert e2fsck.returncode == 0, f"e2fsck finds the root file system unclean: {e2fsck.stdout}"


def test_outputs_manifest_and_sums(fleet_dir: Path) -> None:
    build_ok(fleet_dir)
    out = fleet_dir / "out"
    image = out / "edge-fleet.img"
    sums = (out / "SHA256SUMS").read_text().splitlines()
    assert f"{sha256(image)}  edge-fleet.img" in sums
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["role"] == "base"
    assert manifest["inputs"][0]["sha256"] == sha256(fleet_dir / "base.img")
    assert manifest["inputs"][1]["sha256"] == sha256(elf_for("arm64"))
    assert manifest["agent_version"] and manifest["config"]["sha256"]
    assert manifest["k3s"]["arch"] == "arm64" and not manifest["k3s_test_standin"]
    for text in (json.dumps(manifest), (out / "SHA256SUMS").read_text()):
        assert TEST_TOKEN not in text and "s3cr3t" not in text
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    inspected = pifleet("inspect", "--json", str(image), cwd=fleet_dir)
    assert inspected.returncode == 0
    facts = json.loads(inspected.stdout)
    for key in ("os", "k3s", "agent", "seed", "cmdline"):
        assert facts[key] == manifest[key], key


def test_same_inputs_give_identical_images_and_rebuild_changes_nothing(fleet_dir: Path) -> None:
    build_ok(fleet_dir, "-o", "a")
    build_ok(fleet_dir, "-o", "b")
    first = fleet_dir / "a" / "edge-fleet.img"
    assert sha256(first) == sha256(fleet_dir / "b" / "edge-fleet.img")
    build_ok(fleet_dir, "--base", "a/edge-fleet.img", "-o", "c")
    again = fleet_dir / "c" / "edge-fleet.img"
    assert again.stat().st_size == first.stat().st_size
    assert sha256(again) == sha256(first)
    cmdline = fat_read(again, "/cmdline.txt").decode()
    assert cmdline.split().count("cgroup_memory=1") == 1


def test_source_date_epoch_sets_timestamps(fleet_dir: Path) -> None:
    proc = pifleet("build", "fleet.yaml", cwd=fleet_dir, env={"SOURCE_DATE_EPOCH": "1800000000"})
    assert proc.returncode == 0, proc.stderr
    image = fleet_dir / "out" / "edge-fleet.img"
    assert "mtime: 0x6b49d200" in debugfs(image, "stat /usr/local/bin/k3s")
    assert (
        json.loads((fleet_dir / "out" / "manifest.json").read_text())["source_date_epoch"]
        == 1800000000
    )


def test_generated_user_data_passes_cloud_init_schema(fleet_dir: Path, tmp_path: Path) -> None:
    if shutil.which("cloud-init") is None:
        pytest.skip("cloud-init is not installed (tools/setup.sh installs it)")
    (fleet_dir / "fleet.yaml").write_text(
        fleet_yaml(
            network="network:\n  wifi: {ssid: 'edge net', country: DE, password_env: WIFI_PSK}"
        )
    )
    proc = pifleet("build", "fleet.yaml", cwd=fleet_dir, env={"WIFI_PSK": "correct horse battery"})
    assert proc.returncode == 0, proc.stderr
    assert "correct horse" not in proc.stderr
    image = fleet_dir / "out" / "edge-fleet.img"
    user_data = tmp_path / "user-data"
    user_data.write_bytes(fat_read(image, "/user-data"))
    schema = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(user_data)], capture_output=True, text=True
    )
    assert schema.returncode == 0, schema.stdout + schema.stderr
    assert "Valid cloud-config" in schema.stdout
    # network-config through cloud-init's own parser and networkd renderer
    network = tmp_path / "network-config"
    network.write_bytes(fat_read(image, "/network-config"))
    rendered = networkd_render(network)
    assert rendered.returncode == 0, rendered.stderr
    assert "Name=eth0" in rendered.stdout and "DHCP=ipv4" in rendered.stdout
    assert "regdom" in fat_read(image, "/cmdline.txt").decode()


def test_build_ubuntu_and_armhf(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    make_image("ubuntu.img", layout="ubuntu")
    make_image("armhf.img", layout="trixie", arch="armhf")
    (tmp_path / "token").write_text(TEST_TOKEN)
    (tmp_path / "token").chmod(0o600)
    (tmp_path / "u.yaml").write_text(
        fleet_yaml(base="base: {path: ubuntu.img}", name="name: ubuntu-fleet")
    )
    proc = pifleet("build", "u.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    image = tmp_path / "out" / "ubuntu-fleet.img"
    assert b"cgroup_enable=memory" in fat_read(image, "/cmdline.txt")
    assert fat_read(image, "/meta-data").startswith(b"instance-id:")
    (tmp_path / "a.yaml").write_text(
        fleet_yaml(
            base="base: {path: armhf.img}",
            arch="arch: armhf",
            name="name: armhf-fleet",
            k3s=f"k3s: {{binary: {elf_for('armhf')}}}",
        )
    )
    proc = pifleet("build", "a.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(
        pifleet("inspect", "--json", str(tmp_path / "out/armhf-fleet.img"), cwd=tmp_path).stdout
    )
    assert facts["os"]["arch"] == "armhf" and facts["k3s"]["arch"] == "armhf"


def test_token_in_boot_partition_when_asked(fleet_dir: Path, tmp_path: Path) -> None:
    (fleet_dir / "fleet.yaml").write_text(
        fleet_yaml(
            cluster="cluster: {server: 'https://k3s.example.net:6443', token_file: token, token_in_boot: true}"
        )
    )
    build_ok(fleet_dir)
    image = fleet_dir / "out" / "edge-fleet.img"
    assert fat_read(image, "/pifleet/token").decode().strip() == TEST_TOKEN
    assert (
        "File not found"
        in subprocess.run(
            ["debugfs", "-R", "stat /etc/pifleet/token", root_spec(image)],
            capture_output=True,
            text=True,
        ).stderr
    )
