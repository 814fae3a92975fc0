"""What others may read: the device's boot partition mount, and the outputs that may be
shared (issue 11, items 2 and 3)."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest

from builder.config.fleet import load
from builder.seed.cloudinit import HostKey, seed_files
from builder.seed.cmdline import meta_instance_id
from builder.steps.fstab import private_boot
from tests.conftest import fleet_yaml, pifleet
from tests.image_read import debugfs, root_read, root_spec
from tests.layouts import LAYOUTS, make_pi_image


@pytest.mark.parametrize("layout", ["trixie", "ubuntu"])
def test_built_image_mounts_the_boot_partition_for_root_only(tmp_path: Path, layout: str) -> None:
    make_pi_image(tmp_path / "base.img", LAYOUTS[layout])
    (tmp_path / "token").write_text("K10" + "ab" * 32 + "::server:x\n")
    (tmp_path / "token").chmod(0o600)
    (tmp_path / "fleet.yaml").write_text(fleet_yaml())
    proc = pifleet("build", "fleet.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    fstab = root_read(tmp_path / "out/edge-fleet.img", "/etc/fstab", tmp_path).decode()
    boot = [ln for ln in fstab.splitlines() if " vfat " in ln]
    assert len(boot) == 1
    assert boot[0].split()[3] == "defaults,fmask=0077,dmask=0077"
    assert boot[0].split()[1] == LAYOUTS[layout].boot_mount
    others = [ln for ln in fstab.splitlines() if " vfat " not in ln]
    assert others[0].split() == ["proc", "/proc", "proc", "defaults", "0", "0"]


def log_mode(image: Path, path: str) -> tuple[int, int, int]:
    """(permission bits, uid, size) of a file in the image's root filesystem, by debugfs."""
    stat = debugfs(image, f"stat {path}")
    mode = re.search(r"Mode:\s+(\d+)", stat)
    owner = re.search(r"User:\s+(\d+)", stat)
    size = re.search(r"Size:\s+(\d+)", stat)
    assert mode and owner and size, stat
    return int(mode.group(1), 8), int(owner.group(1)), int(size.group(1))


def test_cloud_init_logs_are_root_only_from_their_first_byte(fleet_dir: Path) -> None:
    """cloud-init logs the Wi-Fi PSK it applies; it keeps an existing log's mode."""
    logs = ("/var/log/cloud-init.log", "/var/log/cloud-init-output.log")
    base = fleet_dir / "base.img"
    # the base already has one log, group- and world-readable, with a line in it
    line = fleet_dir / "line"
    line.write_text("an earlier boot's line\n")
    subprocess.run(["debugfs", "-w", "-R", f"write {line} {logs[1]}", root_spec(base)],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(["debugfs", "-w", "-R", f"sif {logs[1]} mode 0100644", root_spec(base)],
                   check=True, capture_output=True)  # fmt: skip
    assert log_mode(base, logs[1])[0] == 0o644
    proc = pifleet("build", "fleet.yaml", cwd=fleet_dir)
    assert proc.returncode == 0, proc.stderr
    image = fleet_dir / "out/edge-fleet.img"
    assert log_mode(image, logs[0]) == (0o600, 0, 0)
    assert log_mode(image, logs[1])[:2] == (0o600, 0)
    assert root_read(image, logs[1], fleet_dir) == b"an earlier boot's line\n"
    assert log_mode(base, logs[1])[0] == 0o644  # the base is never modified
    assert "cloud-init.log" not in debugfs(base, "ls -l /var/log")


def test_fstab_edit_is_idempotent_and_keeps_columns() -> None:
    text = (
        "# comment /boot/firmware vfat\n"
        "PARTUUID=1-01  /boot/firmware  vfat    umask=0022,noauto   0  2\n"
        "PARTUUID=1-02  /               ext4    defaults,noatime  0       1\n"
    )
    once = private_boot(text, "/boot/firmware")
    assert once is not None
    assert once.splitlines()[1] == (
        "PARTUUID=1-01  /boot/firmware  vfat    noauto,fmask=0077,dmask=0077   0  2"
    )
    assert once.splitlines()[0] == text.splitlines()[0]
    assert once.splitlines()[2] == text.splitlines()[2]
    assert private_boot(once, "/boot/firmware") is None
    assert private_boot(text, "/boot") is None


WIFI = "network:\n  wifi: {ssid: 'edge net', country: DE, password_env: WIFI_PSK}"


def test_instance_id_does_not_confirm_a_passphrase_guess(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The id is public (meta-data, manifest.json): it must not depend on the PSK."""
    (tmp_path / "f.yaml").write_text(fleet_yaml(network=WIFI))
    ids = set()
    for psk in ("correct horse battery", "wrong guess 12345"):
        monkeypatch.setenv("WIFI_PSK", psk)
        files = seed_files(load(tmp_path / "f.yaml"))
        # The seed carries the WPA PSK derived from the passphrase (never the passphrase).
        derived = hashlib.pbkdf2_hmac("sha1", psk.encode(), b"edge net", 4096, 32).hex()
        assert derived.encode() in files["/network-config"]
        assert psk.encode() not in files["/network-config"]
        ids.add(meta_instance_id(files["/meta-data"]))
    assert len(ids) == 1
    (tmp_path / "f.yaml").write_text(fleet_yaml(network=WIFI.replace("edge net", "other net")))
    other = meta_instance_id(seed_files(load(tmp_path / "f.yaml"))["/meta-data"])
    assert other not in ids, "a change that is not secret still gives a new id"


def test_instance_id_does_not_depend_on_the_host_private_key(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text(fleet_yaml(devices="devices: [{hostname: pi-1}]"))
    config = load(tmp_path / "f.yaml")
    public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl pi-1"
    ids = {
        meta_instance_id(
            seed_files(config, config.devices[0], HostKey(private, public))["/meta-data"]
        )
        for private in ("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n", "guess\n")
    }
    assert len(ids) == 1
