"""cloud-init NoCloud seed (user-data, meta-data, network-config) in the boot partition, where
Raspberry Pi OS Trixie (`cloudinit-rpi`, seedfrom /boot/firmware) and Ubuntu (`cloudinit`,
the system-boot label) read it.

The two differ where Raspberry Pi Imager makes them differ: only `cloudinit-rpi` gets the
`rpi:` block (cloud-init's cc_raspberry_pi: interfaces and USB gadget mode) and the `/ssh`
switch file Raspberry Pi OS reads. network-config is netplan v2 with no renderer, as Imager
writes it; the Wi-Fi password is the derived PSK, never the passphrase.
"""

from __future__ import annotations

import hashlib

from builder import version
from builder.config.model import Device, FleetConfig, Hardware
from builder.layout import META_DATA, NETWORK_CONFIG, SSH_SWITCH, USER_DATA
from builder.seed.base import HostKey, ImageTraits, Seed, SeedFormat, SeedInput, seed_input
from builder.util.render import render as render_template

SEED_FILES = (USER_DATA, META_DATA, NETWORK_CONFIG)
MASK = "(secret)"  # stands for a secret where the instance-id is computed


def render(inp: SeedInput, traits: ImageTraits) -> Seed:
    def user_data(host_key: HostKey | None) -> bytes:
        return render_template(
            "user-data",
            version=version(),
            fleet=inp.fleet,
            hostname=inp.hostname,
            timezone=inp.timezone,
            locale=inp.locale,
            keyboard=inp.keyboard,
            users=inp.users,
            host_key=host_key,
            rpi=rpi_block(inp.hardware) if traits.format == "cloudinit-rpi" else None,
            rfkill=inp.wifi is None and inp.hardware.wifi_country is not None,
        )

    def network(psk: str | None) -> bytes:
        return render_template(
            "network-config",
            version=version(),
            ethernet=inp.ethernet,
            static=inp.static,
            wifi=inp.wifi,
            wifi_psk=psk,
        )

    # The id is public (meta-data, manifest.json): it is derived from the seed with its
    # secrets masked, so it cannot confirm a guess of the PSK or the host key.
    masked_key = HostKey(MASK, inp.host_key.public) if inp.host_key else None
    masked = (user_data(masked_key), network(MASK if inp.wifi_psk else None))
    files = {
        USER_DATA: user_data(inp.host_key),
        META_DATA: render_template(
            "meta-data", instance_id=instance_id(*masked, inp.hostname), hostname=inp.hostname
        ),
        NETWORK_CONFIG: network(inp.wifi_psk),
    }
    if traits.format == "cloudinit-rpi" and any(u.ssh_authorized_keys for u in inp.users):
        files[SSH_SWITCH] = b""
    return Seed(files)


# `cloudinit` (Ubuntu, any cloud-init image) and `cloudinit-rpi` (Raspberry Pi OS): one module.
FORMAT = SeedFormat(
    name="cloudinit",
    variants=("cloudinit-rpi",),
    render=render,
    files=SEED_FILES,
    needs="cloud-init",
    marker="/usr/bin/cloud-init",
    sign=USER_DATA,
)


def rpi_block(hardware: Hardware) -> dict[str, object] | None:
    """cc_raspberry_pi's `rpi:` settings for the interfaces switched on (None: nothing to do)."""
    interfaces = {
        name: True for name in ("i2c", "spi", "serial", "onewire") if getattr(hardware, name)
    }
    block: dict[str, object] = {}
    if interfaces:
        block["interfaces"] = interfaces
    if hardware.usb_gadget:
        block["enable_usb_gadget"] = True
    return block or None


def seed_files(
    config: FleetConfig,
    device: Device | None = None,
    host_key: HostKey | None = None,
    fmt: str = "cloudinit-rpi",
) -> dict[str, bytes]:
    """Boot-partition path -> content of the cloud-init seed for the fleet or one device."""
    return render(seed_input(config, device, host_key), ImageTraits(fmt)).files


def instance_id(user_data: bytes, network: bytes, hostname: str | None) -> str:
    """Derived from what the device is told, its secrets masked: the same seed keeps its id (a
    rebuild changes nothing), any change to it gives a new one (cloud-init runs again), except
    a new Wi-Fi passphrase alone (a new host key changes its public half, so the id)."""
    digest = hashlib.sha256()
    for part in (user_data, network, (hostname or "").encode()):
        digest.update(hashlib.sha256(part).digest())
    return f"pifleet-{digest.hexdigest()[:16]}"
