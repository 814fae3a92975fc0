"""What every seed format takes in and gives out.

In: the fleet's (or one device's) host name, users, SSH keys, network, time zone,
locale, keyboard and Pi interfaces (`SeedInput`), plus what the image can run
(`ImageTraits`). Out: boot-partition files and the kernel command-line words they
need (`Seed`). Each format module (cloudinit, systemd, preseed) has one
function, `render(inp, traits) -> Seed`, and one `SeedFormat` record saying what the format
needs, writes and how a written seed is recognised (as cloud-init's `meta` describes a module);
builder/seed/formats.py lists the records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from builder.config import environ
from builder.config.model import Device, FleetConfig, Hardware, StaticAddress, User, Wifi
from builder.seed.cmdline import wifi_country
from builder.util.errors import UserError


@dataclass(frozen=True)
class HostKey:
    private: str  # OpenSSH private key text
    public: str  # "ssh-ed25519 AAAA... comment"


@dataclass(frozen=True)
class SeedInput:
    fleet: str
    hostname: str | None  # None: the golden image; the agent names the device at first boot
    users: tuple[User, ...]
    ethernet: str
    static: StaticAddress | None
    wifi: Wifi | None
    wifi_password: str | None  # the passphrase, only for formats that need it in clear
    wifi_psk: str | None  # the WPA PSK derived from it (64 hex digits), as Imager writes it
    timezone: str
    locale: str
    keyboard: str | None
    hardware: Hardware
    host_key: HostKey | None = None

    @property
    def country(self) -> str | None:
        """The Wi-Fi regulatory domain (builder/seed/cmdline.py's rule)."""
        return wifi_country(self.wifi, self.hardware)


@dataclass(frozen=True)
class ImageTraits:
    format: str  # cloudinit | cloudinit-rpi | systemd | rpi-preseed
    boot_mount: str = "/boot/firmware"
    imager_custom: bool = False
    userconf: bool = False
    network_manager: bool = False


@dataclass(frozen=True)
class Seed:
    files: dict[str, bytes]
    # Kernel command-line words: a word whose key (text up to "=") is already there replaces
    # it in place, others are appended, so applying a seed twice changes nothing.
    cmdline: tuple[str, ...] = field(default=())


Renderer = Callable[[SeedInput, ImageTraits], Seed]


@dataclass(frozen=True)
class SeedFormat:
    """One seed format: what the OS must have for it, how it is rendered, what it writes."""

    name: str  # Raspberry Pi Imager's init_format
    render: Renderer
    files: tuple[str, ...]  # the seed files it writes at the boot partition's root
    needs: str | None = None  # the package the OS must have (None: any systemd image)
    marker: str | None = None  # the file that stands for that package without a dpkg database
    variants: tuple[str, ...] = ()  # other init_format names the same module renders
    # How `inspect` recognises a written seed: this boot-partition file, and with it this
    # kernel command-line key when the format needs one.
    sign: str = ""
    cmdline_key: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.variants)


def seed_input(
    config: FleetConfig, device: Device | None = None, host_key: HostKey | None = None
) -> SeedInput:
    wifi = (device.wifi if device and device.wifi else None) or config.network.wifi
    password = wifi_password(wifi, str(config.source))
    return SeedInput(
        fleet=config.name,
        hostname=device.hostname if device else None,
        users=config.users,
        ethernet=config.network.ethernet,
        static=(device.static if device else None) or config.network.static,
        wifi=wifi,
        wifi_password=password,
        wifi_psk=wpa_psk(wifi.ssid, password) if wifi and password else None,
        timezone=config.timezone,
        locale=config.locale,
        keyboard=config.seed.keyboard,
        hardware=config.hardware,
        host_key=host_key,
    )


def wpa_psk(ssid: str, passphrase: str) -> str:
    """The WPA PSK for a passphrase (IEEE 802.11i: PBKDF2-HMAC-SHA1, SSID as salt, 4096
    rounds, 32 bytes), so the passphrase itself need not be written."""
    raw = hashlib.pbkdf2_hmac("sha1", passphrase.encode(), ssid.encode(), 4096, 32)
    return raw.hex()


def wifi_password(wifi: Wifi | None, where: str) -> str | None:
    if wifi is None or wifi.password_env is None:
        return None
    value = environ.take(wifi.password_env)
    if not value:
        raise UserError(
            f"{where}: network.wifi.password_env: environment variable {wifi.password_env} is not set"
        )
    if not 8 <= len(value) <= 63 or not all(" " <= c <= "~" for c in value):
        raise UserError(
            f"{where}: network.wifi.password_env: a WPA passphrase has 8 to 63 printable"
            " ASCII characters (IEEE 802.11i)"
        )
    return value


def shell_quote(value: str) -> str:
    """One POSIX shell word: single quotes, an embedded ' as '"'"'."""
    return "'" + value.replace("'", "'\"'\"'") + "'"
