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
import time
from dataclasses import dataclass
from pathlib import Path

from builder.config.fleet import load
from builder.config.labels import image_label
from builder.config.model import Device, FleetConfig
from builder.detect.flavor import Flavor, detect, require_supported, seed_traits
from builder.disk.image import Image
from builder.disk.sparse import copy_file
from builder.disk.superblock import last_write_time
from builder.fleet import servers
from builder.fleet.devicekeys import (
    DeviceIdentity,
    ensure_identity,
    identity_dir,
    known_hosts_line,
    load_identity,
    stage_identity,
    write_known_hosts,
)
from builder.layout import META_DATA
from builder.outputs.artifacts import manifest_inputs
from builder.plan import input_paths, require_buildable, source_date_epoch
from builder.seed import cmdline, formats
from builder.seed.base import HostKey
from builder.sources.digests import sha256_of
from builder.util.atomic import replace_when_done, reported_as
from builder.util.batch import Batch, recover, refuse_overwriting, same_file
from builder.util.errors import UserError
from builder.util.secret import Secret
from builder.util.space import reported_full
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
    files = dict(formats.render(config, seed_traits(flavor), device, secrets.host_key).files)
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
    line = cmdline.read(image.boot)
    if line is not None and line.nocloud is not None and META_DATA in files:
        # The kernel command line beats meta-data: keep its instance-id in agreement.
        country = cmdline.wifi_country(device.wifi or config.network.wifi, config.hardware)
        cmdline.stage_for_k3s(image.boot, line, files[META_DATA], country)
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
    golden: Path,
    dest: Path,
    config: FleetConfig,
    device: Device,
    secrets: DeviceSecrets,
    batch: Batch | None = None,
    shown: Path | None = None,
    golden_sha256: str | None = None,
) -> None:
    """Clone `golden` (reflink where possible, else sparse) to `dest` and personalize the clone:
    staged in `batch` when given, else renamed onto `dest` when done. Errors name `shown`
    (default `dest`), never the temporary copy."""
    # Cached: a fleet of copies hashes the golden image once.
    digest = golden_sha256 or sha256_of(golden)
    with contextlib.ExitStack() as stack:
        if batch is not None:
            tmp = batch.file(dest)
        else:  # holds the token, host key, node password: 0600
            tmp = stack.enter_context(replace_when_done(dest, 0o600))
        with reported_as(tmp, shown or dest), reported_full(dest.parent, dest.name):
            copy_file(golden, tmp)
            apply(open_golden(tmp), config, device, secrets, digest)


def secrets_for(
    config: FleetConfig, device: Device, rotate: bool = False, store: Path | None = None
) -> DeviceSecrets:
    """The device's stored (or new) host key and node password, kept in `store` (default:
    the config's output.dir)."""
    identity = ensure_identity(store or config.output.dir, device.hostname, rotate)
    return DeviceSecrets(host_key=identity.host_key, node_password=identity.node_password)


def record_known_hosts(config: FleetConfig, devices: list[Device]) -> Path:
    lines = []
    for device in devices:
        identity = ensure_identity(config.output.dir, device.hostname)
        lines.append(_known_hosts_line(device, identity))
    return write_known_hosts(config.output.dir, lines)


def _known_hosts_line(device: Device, identity: DeviceIdentity) -> str:
    return known_hosts_line(identity, device.static.address if device.static else None)


def personalize_fleet(
    golden: Path,
    config: FleetConfig,
    devices: list[Device],
    out: Path | None = None,
    batch: Batch | None = None,
    golden_sha256: str | None = None,
) -> list[Path]:
    """One image per device in `out` (default: the golden image's folder): clone, then write
    only its boot seed. New identities and known_hosts go to `out` too.

    All or nothing: everything is staged in `batch` (a new one, committed here, when not
    given) and appears together when it commits; a failing device, Ctrl-C or SIGKILL
    leaves no device image, no identity this run made and no known_hosts. Identities of
    earlier runs are used as they are (a reflashed device needs them).
    """
    folder = out or golden.parent
    with contextlib.ExitStack() as stack:
        if batch is None:
            batch = stack.enter_context(Batch(folder, protected_inputs(config, golden)))
            own = True
        else:
            own = False
        started = time.monotonic()
        written, lines = [], []
        for device in devices:
            dest = folder / f"{device.hostname}.img"
            identity = stage_identity(batch, folder, device.hostname)
            secrets = DeviceSecrets(
                host_key=identity.host_key, node_password=identity.node_password
            )
            personalize_copy(golden, dest, config, device, secrets, batch, None, golden_sha256)
            written.append(dest)
            lines.append(_known_hosts_line(device, identity))
        known = write_known_hosts(folder, lines, batch)
        if own:
            batch.commit()
    if devices:
        per = (time.monotonic() - started) / len(devices)
        log.info(
            "personalized %d device images (%.0f ms each); %s", len(devices), per * 1000, known
        )
    return written


def check_fleet(golden: Path, config: FleetConfig, out: Path, protected: dict[str, Path]) -> None:
    """What `personalize_fleet` into `out` would refuse, found before the golden image is
    built: a device image onto an input or onto the golden image, an unsafe identity."""
    for device in config.devices:
        dest = out / f"{device.hostname}.img"
        if dest == golden:
            raise UserError(f"{dest}: written twice by this run (a device named like the fleet?)")
        refuse_overwriting(dest, protected)
        load_identity(out, device.hostname)


def protected_inputs(config: FleetConfig, image: Path) -> dict[str, Path]:
    """What personalizing `image` reads: never an output."""
    return {
        **manifest_inputs(image),
        **input_paths(config),
        **servers.cluster_inputs(config),
        "the golden image": image,
        "the golden image's block map": image.with_name(image.name + ".bmap"),
    }


def check_output(dest: Path, config: FleetConfig, image: Path) -> None:
    """Refuse, in one line, an output image path that would replace an input, a block map
    name, a directory, or a path in a missing folder."""
    if dest.name.endswith(".bmap"):
        raise UserError(f"{dest}: a block map's name; an image is never written as a .bmap")
    if dest.is_dir():
        raise UserError(f"{dest}: is a directory; give the output image's file name")
    refuse_overwriting(dest, protected_inputs(config, image))
    if not dest.parent.is_dir():
        raise UserError(f"{dest}: no folder {dest.parent} to write it in")


def check_image(image: Path) -> None:
    """The image given must be a file (open_golden then checks it is pifleet's)."""
    if image.is_dir():
        raise UserError(f"{image}: is a directory, not an image file")
    if not image.is_file():
        raise UserError(f"{image}: no such image file")


def command(args: argparse.Namespace) -> int:
    config = load(Path(args.config))
    require_buildable(config)
    device = find_device(config, args.device)
    image = Path(args.image)
    if args.in_place and args.output:
        raise UserError(
            f"{args.output}: -o and --in-place exclude each other (--in-place writes {image})"
        )
    recover(image.parent)  # a killed run's outputs there finish (or go) first
    check_image(image)
    open_golden(image)  # checked before anything is written, naming the image given
    dest = None
    if not args.in_place:
        dest = Path(args.output) if args.output else image.with_name(f"{device.hostname}.img")
        if same_file(dest, image):
            raise UserError(f"{dest}: the output would overwrite the golden image; use --in-place")
        check_output(dest, config, image)
    secrets = secrets_for(config, device, rotate=args.rotate_keys)
    if dest is None:
        with reported_full(image.parent, image.name):
            changed = apply(open_golden(image), config, device, secrets)
        log.info(
            "personalized %s in place for %s (%d files changed)", image, device.hostname, changed
        )
    else:
        personalize_copy(image, dest, config, device, secrets, shown=image)
        log.info("wrote %s for %s", dest, device.hostname)
    log.info(
        "host key and node password kept in %s", identity_dir(config.output.dir, device.hostname)
    )
    record_known_hosts(config, [device])
    return 0
