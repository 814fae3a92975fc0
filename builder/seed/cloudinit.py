"""Renders the cloud-init NoCloud seed (user-data, meta-data, network-config) into the
boot partition, where Raspberry Pi OS Trixie (seedfrom /boot/firmware) and Ubuntu
(the system-boot partition) read it.

`seed_files` is shared with per-device personalization: the golden image gets
the fleet-wide seed, a device gets the same plus its host name, address and keys.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from builder import __version__
from builder.config.model import Device, FleetConfig, StaticAddress, Wifi
from builder.disk.image import Image
from builder.plan import Plan
from builder.util.errors import UserError
from builder.util.render import render

SEED_FILES = ("/user-data", "/meta-data", "/network-config")
SSH_SWITCH = "/ssh"  # Raspberry Pi OS enables sshd at first boot when this file exists


@dataclass(frozen=True)
class HostKey:
    private: str  # OpenSSH private key text
    public: str  # "ssh-ed25519 AAAA... comment"


def apply(image: Image, plan: Plan) -> None:
    for path, data in seed_files(plan.config).items():
        image.boot.stage(path, data)


def seed_files(
    config: FleetConfig, device: Device | None = None, host_key: HostKey | None = None
) -> dict[str, bytes]:
    """Boot-partition path -> content of the seed for the fleet or for one device."""
    hostname = device.hostname if device else None
    wifi = (device.wifi if device and device.wifi else None) or config.network.wifi
    static: StaticAddress | None = (device.static if device else None) or config.network.static
    user_data = render(
        "user-data",
        version=__version__,
        fleet=config.name,
        hostname=hostname,
        timezone=config.timezone,
        locale=config.locale,
        users=config.users,
        host_key=host_key,
    )
    network = render(
        "network-config",
        version=__version__,
        ethernet=config.network.ethernet,
        static=static,
        wifi=wifi,
        wifi_password=wifi_password(wifi, str(config.source)),
    )
    files = {
        "/user-data": user_data,
        "/meta-data": render(
            "meta-data", instance_id=instance_id(user_data, network, hostname), hostname=hostname
        ),
        "/network-config": network,
    }
    if any(user.ssh_authorized_keys for user in config.users):
        files[SSH_SWITCH] = b""
    return files


def instance_id(user_data: bytes, network: bytes, hostname: str | None) -> str:
    """Derived from what the device is told, and nothing else: the same seed keeps its id (a
    rebuild changes nothing), any change to it gives a new one (cloud-init runs again)."""
    digest = hashlib.sha256()
    for part in (user_data, network, (hostname or "").encode()):
        digest.update(hashlib.sha256(part).digest())
    return f"pifleet-{digest.hexdigest()[:16]}"


def wifi_password(wifi: Wifi | None, where: str) -> str | None:
    if wifi is None or wifi.password_env is None:
        return None
    value = os.environ.get(wifi.password_env)
    if not value:
        raise UserError(
            f"{where}: network.wifi.password_env: environment variable {wifi.password_env} is not set"
        )
    if not 8 <= len(value) <= 63:
        raise UserError(
            f"{where}: network.wifi.password_env: a WPA passphrase has 8 to 63 characters"
        )
    return value
