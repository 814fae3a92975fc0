"""No secret on the card's boot partition once the device has booted (issue 11, item 2): QEMU.

The shared arm64 device, with a per-device SSH host key (user-data), a Wi-Fi PSK
(network-config), a node password and a boot-partition token, boots and joins (the session's
one `boot-test` of it), then boots once more. After each boot
the FAT partition is read raw, every byte of it (free clusters and deleted directory
entries included), and none of the secrets may be there; before the first boot they all
are, so the search is known to find them. After the reboot the hostname, the SSH host key
and the network are still the configured ones: cloud-init kept its instance.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from builder.disk.image import Image
from builder.fleet.devicekeys import HOST_KEY_PUB_FILE, NODE_PASSWORD, identity_dir
from builder.qemu.console import Stage
from builder.testserver.server import K3sTestServer
from tests.boot_helpers import DEVICE, BootTestRun, guest_disk
from tests.image_read import ext4_read
from tests.power_cycles import Device

pytestmark = pytest.mark.slow
# getty's /etc/issue line, printed with a newline (its "login:" prompt has none, so a reader
# of whole lines never sees it unless something else prints after it).
ISSUE = re.compile(r"^Debian GNU/Linux \S+ (\S+) ttyAMA0")
CLOUD_INIT_DONE = re.compile(r"Cloud-init v\. \S+ finished at ")


def fat_bytes(disk: Path) -> bytes:
    """The whole boot partition, raw."""
    part = Image.open(disk).boot_partition
    with open(disk, "rb") as f:
        f.seek(part.start)
        return f.read(part.size)


def secrets_of(image: Path, token: str) -> dict[str, list[bytes]]:
    """Each secret as the bytes that would betray it on the FAT."""
    boot = Image.open(image).boot
    user_data = yaml.safe_load(boot.read("/user-data") or b"")
    key = user_data["ssh_keys"]["ed25519_private"]
    body = [ln.encode() for ln in key.splitlines() if len(ln) >= 20 and "-----" not in ln]
    network = yaml.safe_load(boot.read("/network-config") or b"")
    psk = network["network"]["wifis"]["wlan0"]["access-points"]["edge-net"]["password"]
    node_password = (boot.read("/pifleet/node-password") or b"").strip()
    return {
        "SSH host private key": body,
        "Wi-Fi PSK": [str(psk).encode()],
        "node password": [node_password],
        "join token": [token.rsplit(":", 1)[1].encode()],
    }


def found_in(raw: bytes, secrets: dict[str, list[bytes]]) -> list[str]:
    return [what for what, pieces in secrets.items() if any(p in raw for p in pieces if p)]


def test_no_secret_on_the_boot_partition_after_first_boot_and_reboot(
    arm64_boot_test: BootTestRun, tmp_path: Path
) -> None:
    """The first boot is the shared arm64 `boot-test` run (tests/test_boot.py checks its
    report); this test reads the disk it left, then boots a copy of that disk once more."""
    run = arm64_boot_test
    image, state = run.image, run.state
    assert run.proc.returncode == 0, f"the first boot failed: {run.proc.stdout[-2000:]}"
    with K3sTestServer(
        state_dir=state, port=server_port(run.vm / "disk.qcow2", tmp_path)
    ) as server:
        device = Device(image, tmp_path, server)
        flat = tmp_path / "before"
        flat.mkdir()
        disk, _root = guest_disk(device.disk, flat)
        secrets = secrets_of(disk, server.mint_token())
        assert found_in(fat_bytes(disk), secrets) == list(secrets), "the search finds nothing"

        first_console = (run.vm / "console.log").read_text().splitlines()
        assert f"pifleet-firstboot: joined node={DEVICE}" in "\n".join(first_console)
        assert any("pifleet-custody: moved" in line for line in first_console), first_console[-40:]
        after_first = tmp_path / "first"
        after_first.mkdir()
        disk, root = guest_disk(run.vm / "disk.qcow2", after_first)
        assert found_in(fat_bytes(disk), secrets) == []
        network_first = rendered_network(root)

        shutil.copyfile(run.vm / "disk.qcow2", device.disk)  # the joined disk, booted again
        second = device.boot(
            Stage("the second boot done", lambda r: second_boot_done(r.console)), clean=True
        )
        assert second_boot_done(second.console), second.console[-40:]
        assert any(
            "pifleet-custody: the boot partition holds no secrets" in line
            for line in second.console
        ), second.console[-40:]
        after_second = tmp_path / "second"
        after_second.mkdir()
        disk, root = guest_disk(device.disk, after_second)
        assert found_in(fat_bytes(disk), secrets) == []
        assert server.registered_nodes() == [DEVICE]

    # The same device after the reboot: name, host key, network, one cloud-init instance.
    hostnames = [m.group(1) for m in map(ISSUE.match, second.console) if m]
    assert hostnames[-1] == DEVICE
    assert ext4_read(root, "/etc/hostname").decode().strip() == DEVICE
    identity = identity_dir(image.parent / "out", DEVICE)
    configured = (identity / HOST_KEY_PUB_FILE).read_text().split()[:2]
    assert ext4_read(root, "/etc/ssh/ssh_host_ed25519_key.pub").decode().split()[:2] == configured
    assert rendered_network(root) == network_first and network_first
    result = json.loads(ext4_read(root, "/var/lib/cloud/data/result.json"))
    assert result["v1"]["errors"] == [], result
    log = ext4_read(root, "/var/log/cloud-init.log").decode(errors="replace")
    assert log.count("Applying network configuration from ds ") == 1, "network applied twice"
    # The secrets now live in the root filesystem, readable by root only.
    kept = ext4_read(root, "/var/lib/cloud/seed/nocloud/network-config")
    assert b"edge-net" in kept
    # cloud-init logged the PSK it applied (the reason its log must be root's alone), and
    # no file that holds a secret anywhere under /etc or /var is readable by anyone else.
    assert found_in(log.encode(), secrets) == ["Wi-Fi PSK"]
    dumped = tmp_path / "rootfs"
    readable = [f"{path} ({oct(mode)})" for path, mode in readable_secrets(root, dumped, secrets)]
    assert readable == []
    assert (identity / NODE_PASSWORD).read_text().strip() == (
        ext4_read(root, "/etc/rancher/node/password").decode().strip()
    )
    shutil.rmtree(tmp_path / "before")


def readable_secrets(
    root: Path, dest: Path, secrets: dict[str, list[bytes]]
) -> Iterator[tuple[str, int]]:
    """(path, mode) of each file under /etc and /var holding a secret that a user other than
    its owner may read. The trees are copied out by debugfs rdump, which keeps the modes."""
    dest.mkdir()
    for top in ("etc", "var"):
        dump = subprocess.run(["debugfs", "-R", f"rdump /{top} {dest}", str(root)],
                              check=True, capture_output=True, text=True)  # fmt: skip
        assert dump.stderr.splitlines()[1:] == [], dump.stderr  # debugfs exits 0 on errors
    assert (dest / "var/log/cloud-init.log").is_file() and (dest / "etc/hostname").is_file()
    for path in sorted(dest.rglob("*")):
        shared = path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o077
        if shared and found_in(path.read_bytes(), secrets):
            yield "/" + str(path.relative_to(dest)), path.stat().st_mode & 0o777


def second_boot_done(console: list[str]) -> bool:
    """getty is up (its issue line names the host) and cloud-init's final stage has run."""
    return any(ISSUE.match(line) for line in console) and any(
        CLOUD_INIT_DONE.search(line) for line in console
    )


def rendered_network(root: Path) -> dict[str, bytes]:
    """The network configuration cloud-init rendered (systemd-networkd files on this base)."""
    listing = subprocess.run(
        ["debugfs", "-R", "ls /etc/systemd/network", str(root)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = [n for n in re.findall(r"\(\d+\)\s+(\S+)", listing) if n.endswith(".network")]
    return {n: ext4_read(root, "/etc/systemd/network/" + n) for n in names}


def server_port(overlay: Path, tmp: Path) -> int:
    """The port of the server the device joined (the agent was pointed at it on the boot
    partition): its second boot finds a server there again."""
    flat = tmp / "port"
    flat.mkdir()
    disk, _root = guest_disk(overlay, flat)
    device = json.loads(Image.open(disk).boot.read("/pifleet/device.json") or b"{}")
    port = urlsplit(device["server"]).port
    shutil.rmtree(flat)
    assert port, device
    return port
