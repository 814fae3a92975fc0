"""Per-device personalization: what makes pi-042 itself, written into its boot partition.

The golden image carries everything fleet-wide; a device adds its seed (host
name, instance-id, address, SSH host key), the agent's device file (node name,
labels) and its secrets (pre-generated node password, optionally a token).
An agent's root filesystem is not touched, so personalizing one more device
costs a few small FAT writes, never a rewrite of gigabytes. A server of a cluster
pifleet creates also gets the cluster CA and the server token in its root
filesystem (`servers`): a few KiB through debugfs, never on the FAT.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from builder.config.fleet import load
from builder.config.labels import image_label
from builder.config.model import Device, FleetConfig
from builder.disk.flavor import Flavor, detect, require_supported
from builder.disk.image import Image
from builder.disk.sparse import copy_file
from builder.disk.superblock import last_write_time
from builder.fleet import servers
from builder.fleet.devicekeys import (
    ensure_identity,
    identity_dir,
    known_hosts_line,
    write_known_hosts,
)
from builder.plan import source_date_epoch
from builder.seed import formats
from builder.seed.base import HostKey
from builder.sources.digests import sha256_of
from builder.steps import cmdline
from builder.util.atomic import replace_when_done
from builder.util.errors import UserError
from builder.util.secret import Secret
from firstboot import joinconfig

log = logging.getLogger("pifleet.personalize")

BOOT_DIR = f"/{joinconfig.BOOT_SUBDIR}"


@dataclass(frozen=True)
class DeviceSecrets:
    host_key: HostKey | None = None
    node_password: Secret | None = None
    token: Secret | None = None  # flash-time injection; None keeps the golden image's token


def device_files(
    config: FleetConfig,
    device: Device,
    secrets: DeviceSecrets,
    flavor: Flavor,
    golden_sha256: str | None = None,
) -> dict[str, bytes]:
    """Boot-partition path -> content for `device`: its seed in the image's format, and its
    device file (labelled with its golden image's digest when known)."""
    files = dict(formats.render(config, flavor, device, secrets.host_key).files)
    labels = list(device.labels) + ([image_label(golden_sha256)] if golden_sha256 else [])
    info = joinconfig.DeviceConfig(
        hostname=device.hostname, node_labels=labels, node_taints=list(device.taints)
    )
    info = servers.seed(config, device, info)
    files[f"{BOOT_DIR}/{joinconfig.DEVICE_FILE}"] = joinconfig.dump_device_config(info)
    if secrets.node_password is not None:
        files[f"{BOOT_DIR}/{joinconfig.BOOT_NODE_PASSWORD_FILE}"] = (
            secrets.node_password.reveal() + "\n"
        ).encode()
    if secrets.token is not None:
        files[f"{BOOT_DIR}/{joinconfig.BOOT_TOKEN_FILE}"] = (secrets.token.reveal() + "\n").encode()
    return files


def apply(
    image: Image,
    config: FleetConfig,
    device: Device,
    secrets: DeviceSecrets,
    golden_sha256: str | None = None,
) -> int:
    """Write `device`'s files into the boot partition of `image`; returns files changed."""
    flavor = require_supported(detect(image), image.path, config.seed.format)
    files = device_files(config, device, secrets, flavor, golden_sha256)
    for path, data in files.items():
        image.boot.stage(path, data)
    for entry in servers.root_entries(config, device):
        image.root.stage(entry)
    root_changed = image.root.flush()
    raw = image.boot.read(cmdline.CMDLINE)
    if raw is not None and b"ds=nocloud" in raw and "/meta-data" in files:
        # The kernel command line beats meta-data: keep its instance-id in agreement.
        instance = cmdline.meta_instance_id(files["/meta-data"])
        wifi = device.wifi or config.network.wifi
        country = wifi.country if wifi else config.hardware.wifi_country
        image.boot.stage(cmdline.CMDLINE, cmdline.edit(raw, instance, country))
    return image.boot.flush() + root_changed


def open_golden(path: Path) -> Image:
    """Open a pifleet-built image, with FAT timestamps from SOURCE_DATE_EPOCH or the image."""
    image = Image.open(path)
    if image.root.stat(joinconfig.JOIN_CONFIG_PATH) is None:
        raise UserError(f"{path}: not built by `pifleet build` (no {joinconfig.JOIN_CONFIG_PATH})")
    epoch = source_date_epoch()
    if epoch is None:
        epoch = last_write_time(path, image.root_partition.start)
    return Image.open(path, epoch)


def find_device(config: FleetConfig, hostname: str) -> Device:
    for device in config.devices:
        if device.hostname == hostname:
            return device
    known = ", ".join(d.hostname for d in config.devices[:8]) or "none"
    raise UserError(f"{config.source}: devices: no device named {hostname!r} (known: {known})")


def personalize_copy(
    golden: Path, dest: Path, config: FleetConfig, device: Device, secrets: DeviceSecrets
) -> None:
    """Clone `golden` (reflink where possible, else sparse) to `dest` and personalize the clone."""
    digest = sha256_of(golden)  # cached: a fleet of copies hashes the golden image once
    with replace_when_done(dest, 0o600) as tmp:  # holds the token, host key, node password
        copy_file(golden, tmp)
        apply(open_golden(tmp), config, device, secrets, digest)


def secrets_for(config: FleetConfig, device: Device, rotate: bool = False) -> DeviceSecrets:
    """The device's stored (or new) host key and node password from the operator's output."""
    identity = ensure_identity(config.output.dir, device.hostname, rotate)
    return DeviceSecrets(host_key=identity.host_key, node_password=identity.node_password)


def record_known_hosts(config: FleetConfig, devices: list[Device]) -> Path:
    lines = []
    for device in devices:
        identity = ensure_identity(config.output.dir, device.hostname)
        address = device.static.address if device.static else None
        lines.append(known_hosts_line(identity, address))
    return write_known_hosts(config.output.dir, lines)


def personalize_fleet(golden: Path, config: FleetConfig, devices: list[Device]) -> list[Path]:
    """One image per device next to the golden image: clone, then write only its boot seed.

    All or nothing: when a device fails or the run is interrupted, the device images and
    the identities this run made are removed (identities of earlier runs stay: a reflashed
    device needs them) and known_hosts is not written.
    """
    written: list[Path] = []
    made = [
        identity_dir(config.output.dir, d.hostname)
        for d in devices
        if not identity_dir(config.output.dir, d.hostname).exists()
    ]
    fresh_root = not (config.output.dir / "devices").exists()
    started = time.monotonic()
    try:
        for device in devices:
            dest = golden.with_name(f"{device.hostname}.img")
            personalize_copy(golden, dest, config, device, secrets_for(config, device))
            written.append(dest)
        known = record_known_hosts(config, devices)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
        if fresh_root:
            with contextlib.suppress(OSError):
                (config.output.dir / "devices").rmdir()
        raise
    if devices:
        per = (time.monotonic() - started) / len(devices)
        log.info(
            "personalized %d device images (%.0f ms each); %s", len(devices), per * 1000, known
        )
    return written


def command(args: argparse.Namespace) -> int:
    config = load(Path(args.config))
    device = find_device(config, args.device)
    image = Path(args.image)
    secrets = secrets_for(config, device, rotate=args.rotate_keys)
    if args.in_place:
        changed = apply(open_golden(image), config, device, secrets)
        log.info(
            "personalized %s in place for %s (%d files changed)", image, device.hostname, changed
        )
    else:
        dest = Path(args.output) if args.output else image.with_name(f"{device.hostname}.img")
        if dest.resolve() == image.resolve():
            raise UserError(f"{dest}: the output would overwrite the golden image; use --in-place")
        if not dest.parent.is_dir():
            raise UserError(f"{dest}: no folder {dest.parent} to write it in")
        personalize_copy(image, dest, config, device, secrets)
        log.info("wrote %s for %s", dest, device.hostname)
    log.info(
        "host key and node password kept in %s", identity_dir(config.output.dir, device.hostname)
    )
    record_known_hosts(config, [device])
    return 0
