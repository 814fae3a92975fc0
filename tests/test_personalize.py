"""One golden image, hundreds of distinct devices: only the boot partition differs."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from builder.config.fleet import load
from builder.disk.table import read_table
from builder.fleet.devicekeys import ensure_identity
from builder.fleet.personalize import personalize_fleet
from tests.conftest import TEST_TOKEN, fleet_yaml, pifleet
from tests.image_read import fat_read

DEVICES = 20  # bench/personalize_flash.py measures 200


def partition_digest(image: Path, number: int) -> str:
    part = read_table(image).partition(number)
    digest = hashlib.sha256()
    with open(image, "rb") as f:
        f.seek(part.start)
        remaining = part.size
        while remaining:
            chunk = f.read(min(remaining, 1 << 22))
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


@pytest.fixture
def golden(fleet_dir: Path) -> tuple[Path, Path]:
    devices = "devices:\n" + "".join(
        f"  - {{hostname: pi-{i:03d}, labels: {{rack: r{i % 7}}}"
        + (f", address: 10.20.1.{i}/16, gateway: 10.20.0.1" if i % 2 else "")
        + "}\n"
        for i in range(1, DEVICES + 1)
    )
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(devices=devices.rstrip("\n")))
    proc = pifleet("build", "fleet.yaml", cwd=fleet_dir)
    assert proc.returncode == 0, proc.stderr
    return fleet_dir / "out" / "edge-fleet.img", fleet_dir / "fleet.yaml"


def test_twenty_devices_from_one_golden_image(golden: tuple[Path, Path]) -> None:
    image, config_path = golden
    config = load(config_path)
    golden_sha = hashlib.sha256(image.read_bytes()).hexdigest()
    images = personalize_fleet(image, config, list(config.devices))
    assert len(images) == DEVICES
    root = partition_digest(image, 2)
    instance_ids, host_keys = set(), set()
    known = {}
    for line in (config.output.dir / "known_hosts").read_text().splitlines():
        names, key_type, key = line.split()
        known[names.split(",")[0]] = (names, f"{key_type} {key}")
    for device, path in zip(config.devices, images, strict=True):
        assert path.name == f"{device.hostname}.img"
        meta = yaml.safe_load(fat_read(path, "/meta-data"))
        user = yaml.safe_load(fat_read(path, "/user-data"))
        assert meta["local-hostname"] == device.hostname == user["hostname"]
        instance_ids.add(meta["instance-id"])
        public = user["ssh_keys"]["ed25519_public"]
        host_keys.add(public)
        serialization.load_ssh_private_key(user["ssh_keys"]["ed25519_private"].encode(), None)
        assert known[device.hostname][1] == " ".join(public.split()[:2])
        info = json.loads(fat_read(path, "/pifleet/device.json"))
        # The device's own labels, then its golden image's digest (for `pifleet status`).
        labelled = [*device.labels, f"pifleet/image={golden_sha[:12]}"]
        assert info["hostname"] == device.hostname and info["node_labels"] == labelled
        stored = (config.output.dir / "devices" / device.hostname / "node-password").read_text()
        assert fat_read(path, "/pifleet/node-password") == stored.encode()
        network = yaml.safe_load(fat_read(path, "/network-config"))["network"]["ethernets"]["eth0"]
        if device.static:
            assert network["addresses"] == [device.static.address]
            assert (
                known[device.hostname][0]
                == f"{device.hostname},{device.static.address.split('/')[0]}"
            )
        else:
            assert network["dhcp4"] is True
        assert partition_digest(path, 2) == root, "root filesystems must be identical"
    assert len(instance_ids) == DEVICES and len(host_keys) == DEVICES
    golden_meta = yaml.safe_load(fat_read(image, "/meta-data"))
    assert golden_meta["instance-id"] not in instance_ids
    assert "local-hostname" not in golden_meta, "the golden image names itself at first boot"


def test_identity_is_kept_and_rotated_on_request(tmp_path: Path) -> None:
    first = ensure_identity(tmp_path, "pi-001")
    again = ensure_identity(tmp_path, "pi-001")
    assert again == first
    rotated = ensure_identity(tmp_path, "pi-001", rotate=True)
    assert rotated.host_key != first.host_key and rotated.node_password != first.node_password
    directory = tmp_path / "devices" / "pi-001"
    assert directory.stat().st_mode & 0o777 == 0o700
    assert all((f.stat().st_mode & 0o777) == 0o600 for f in directory.iterdir())
    # OpenSSH itself reads both halves and agrees on the fingerprint.
    private_fp = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(directory / "ssh_host_ed25519_key")],
        capture_output=True,
        text=True,
        check=True,
    )
    public_fp = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(directory / "ssh_host_ed25519_key.pub")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "(ED25519)" in public_fp.stdout
    assert private_fp.stdout.split()[1] == public_fp.stdout.split()[1]


def test_personalize_cli_copy_and_in_place(golden: tuple[Path, Path]) -> None:
    image, _config = golden
    d = image.parent.parent
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    proc = pifleet(
        "personalize", "out/edge-fleet.img", "--config", "fleet.yaml", "--device", "pi-007", cwd=d
    )
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before, "the golden image is untouched"
    device_image = d / "out" / "pi-007.img"
    assert device_image.stat().st_mode & 0o777 == 0o600  # token, host key, node password
    assert yaml.safe_load(fat_read(device_image, "/meta-data"))["local-hostname"] == "pi-007"
    assert TEST_TOKEN not in proc.stderr + proc.stdout
    key = (d / "out/devices/pi-007/node-password").read_text().strip()
    assert key not in proc.stderr + proc.stdout
    again = pifleet(
        "personalize",
        "out/pi-007.img",
        "--config",
        "fleet.yaml",
        "--device",
        "pi-008",
        "--in-place",
        cwd=d,
    )
    assert again.returncode == 0, again.stderr
    assert yaml.safe_load(fat_read(device_image, "/meta-data"))["local-hostname"] == "pi-008"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--device", "pi-999"], "devices: no device named 'pi-999'"),
        (["--device", "pi-001", "-o", "out/edge-fleet.img"], "would overwrite the golden image"),
    ],
)
def test_personalize_refuses_clearly(
    golden: tuple[Path, Path], args: list[str], expected: str
) -> None:
    image, _ = golden
    proc = pifleet(
        "personalize",
        "out/edge-fleet.img",
        "--config",
        "fleet.yaml",
        *args,
        cwd=image.parent.parent,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and expected in proc.stderr


def test_personalize_refuses_an_image_not_built_by_pifleet(fleet_dir: Path) -> None:
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(devices="devices: [{hostname: pi-001}]"))
    proc = pifleet(
        "personalize", "base.img", "--config", "fleet.yaml", "--device", "pi-001", cwd=fleet_dir
    )
    assert proc.returncode == 2
    assert "not built by `pifleet build`" in proc.stderr


def test_output_into_a_missing_folder_is_one_line(fleet_dir: Path) -> None:
    """Was `internal error: FileNotFoundError` naming pifleet's temporary file."""
    devices = "devices:\n  - hostname: edge-001"
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(devices=devices))
    assert pifleet("build", "fleet.yaml", cwd=fleet_dir).returncode == 0
    done = pifleet(
        "personalize", "out/edge-fleet.img", "--config", "fleet.yaml", "--device", "edge-001",
        "-o", "nowhere/edge-001.img", cwd=fleet_dir,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr == "pifleet: error: nowhere/edge-001.img: no folder nowhere to write it in\n"


def test_device_is_labelled_with_its_golden_image_digest(fleet_dir: Path) -> None:
    """`pifleet status` tells nodes of an older image by this label (see builder/config/labels.py)."""
    from builder.disk.image import Image

    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(devices="devices:\n  - hostname: edge-001"))
    assert pifleet("build", "fleet.yaml", cwd=fleet_dir).returncode == 0
    golden = fleet_dir / "out" / "edge-fleet.img"
    digest = hashlib.sha256(golden.read_bytes()).hexdigest()
    sums = (fleet_dir / "out" / "SHA256SUMS").read_text()
    assert f"{digest}  edge-fleet.img" in sums
    done = pifleet(
        "personalize", str(golden), "--config", "fleet.yaml", "--device", "edge-001", cwd=fleet_dir
    )
    assert done.returncode == 0, done.stderr
    raw = Image.open(fleet_dir / "out" / "edge-001.img").boot.read("/pifleet/device.json")
    assert raw is not None
    assert f"pifleet/image={digest[:12]}" in json.loads(raw)["node_labels"]
