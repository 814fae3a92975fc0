"""What a fleet file says reaches the device as data, never as commands or paths (issue 21, item 3).

firstrun.sh is run for real by `sh` in a throwaway root: a user namespace (`unshare -rm`) and a
chroot whose /usr is the host's, bind-mounted read-only, and whose system tools (useradd,
systemctl, raspi-config...) are shims that record their arguments. Nothing runs as the host's
root, and nothing outside the throwaway root can be written.
"""

from __future__ import annotations

import base64
import struct
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from builder.config.fleet import load
from builder.config.model import FleetConfig, Hardware, User
from builder.seed import systemd
from builder.seed.base import ImageTraits, SeedInput
from builder.util.errors import UserError
from tests.conftest import fleet_yaml, pifleet
from tests.firstrun_sandbox import run_firstrun, userns_available

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@laptop"
needs_userns = pytest.mark.skipif(
    not userns_available(), reason="unprivileged user namespaces (unshare -rm) are not available"
)


def seed_input(**changes: Any) -> SeedInput:
    base = SeedInput(
        fleet="edge-fleet",
        hostname="pi-1",
        users=(User("ops", (KEY,), True, ("adm",), "/bin/bash"),),
        ethernet="eth0",
        static=None,
        wifi=None,
        wifi_password=None,
        wifi_psk=None,
        timezone="Europe/Berlin",
        locale="en_GB.UTF-8",
        keyboard=None,
        hardware=Hardware(),
    )
    return replace(base, **changes)


@needs_userns
def test_throwaway_root_runs_the_script_and_records_the_tools(tmp_path: Path) -> None:
    """The harness itself: the honest script runs to its end and does what it says."""
    script = systemd.render(seed_input(), ImageTraits("systemd")).files["/firstrun.sh"]
    ran = run_firstrun(script, tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.read("/etc/hostname") == "pi-1\n"
    assert ran.read("/home/ops/.ssh/authorized_keys") == KEY + "\n"
    assert ran.read("/etc/timezone") == "Europe/Berlin\n"
    assert ["useradd", "-m", "-s", "/bin/bash", "ops"] in ran.calls
    assert ["update-locale", "LANG=en_GB.UTF-8"] in ran.calls
    assert "systemd.run" not in ran.read("/boot/firmware/cmdline.txt")
    assert ran.planted() == []


@needs_userns
def test_a_key_line_cannot_end_firstrun_early(tmp_path: Path) -> None:
    """The audit's case, past the config's checks: `EOF` then a command, as SSH key lines of
    the first user (plain-commands branch). Before: a here-document ended at `EOF` and the next
    line ran as root."""
    keys = (KEY, "EOF", "touch /root/PWNED", "$(touch /root/PWNED-2)", "`touch /root/PWNED-3`")
    inp = seed_input(users=(User("ops", keys, False, (), "/bin/bash"),))
    script = systemd.render(inp, ImageTraits("systemd")).files["/firstrun.sh"]
    assert subprocess.run(["sh", "-n"], input=script).returncode == 0
    ran = run_firstrun(script, tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.planted() == []
    assert ran.read("/home/ops/.ssh/authorized_keys") == "\n".join(keys) + "\n"


@needs_userns
def test_every_file_firstrun_writes_is_written_verbatim(tmp_path: Path) -> None:
    """Quotes, backslashes, `$()`, a backtick and `EOF` in every value that lands in a file
    body (SSID in the NetworkManager keyfile, the host key): each file holds exactly them."""
    from builder.config.model import StaticAddress, Wifi
    from builder.seed.base import HostKey
    from builder.seed.nmkeyfile import ethernet_keyfile, wifi_keyfile

    wifi = Wifi("EOF'$(touch /PWNED)`x`\\", "DE", None, False)
    key = HostKey("-----BEGIN OPENSSH PRIVATE KEY-----\nEOF\n'$(touch /PWNED)'\n", KEY)
    static = StaticAddress("10.0.0.5/24", "10.0.0.1", ("10.0.0.1",))
    inp = seed_input(wifi=wifi, wifi_psk="ab" * 32, host_key=key, static=static)
    script = systemd.render(inp, ImageTraits("systemd", network_manager=True)).files["/firstrun.sh"]
    ran = run_firstrun(script, tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.planted() == []
    nm = "/etc/NetworkManager/system-connections"
    assert ran.read(f"{nm}/preconfigured.nmconnection") == wifi_keyfile(wifi, "ab" * 32)
    assert ran.read(f"{nm}/pifleet-eth0.nmconnection") == ethernet_keyfile("eth0", static)
    assert ran.read("/etc/ssh/ssh_host_ed25519_key") == key.private


# -- the config refuses what is not what it claims to be ------------------------------------


def loaded(tmp_path: Path, **sections: str) -> FleetConfig:
    (tmp_path / "token").write_text("x")
    (tmp_path / "fleet.yaml").write_text(fleet_yaml(**sections))
    return load(tmp_path / "fleet.yaml")


def refused_at(tmp_path: Path, key: str, **sections: str) -> str:
    with pytest.raises(UserError) as info:
        loaded(tmp_path, **sections)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    assert f"fleet.yaml: {key}: " in message, message
    return message


def rsa_key() -> str:
    key = rsa.generate_private_key(65537, 2048).public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def ecdsa_key() -> str:
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def sk_key() -> str:
    """A FIDO (security key) ed25519 public key, as `ssh-keygen -t ed25519-sk` writes it."""

    def string(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    kind = b"sk-ssh-ed25519@openssh.com"
    blob = string(kind) + string(bytes(range(32))) + string(b"ssh:")
    return f"{kind.decode()} {base64.b64encode(blob).decode()} me@yubikey"


def users_with_key(key: str) -> str:
    quoted = key.replace("'", "''")
    return f"users:\n  - name: ops\n    ssh_authorized_keys: ['{quoted}']"


@pytest.mark.parametrize(
    "key",
    [
        "EOF",
        "touch /root/PWNED",
        "ssh-ed25519",
        "ssh-ed25519 AAAAC3Nz ops@l",  # truncated blob
        "ssh-ed25519 not*base64",
        "ssh-rsa " + KEY.split()[1],  # an ed25519 blob under another type
        "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x01x").decode(),
        'from="10.0.0.0/8" ' + KEY,  # options are not supported
        "ssh-foo AAAA",
    ],
)
def test_ssh_keys_must_parse_as_keys(tmp_path: Path, key: str) -> None:
    message = refused_at(tmp_path, "users[0].ssh_authorized_keys[0]", users=users_with_key(key))
    assert "OpenSSH public key" in message


@pytest.mark.parametrize(
    "make", [lambda: KEY, rsa_key, ecdsa_key, sk_key], ids=["ed25519", "rsa", "ecdsa", "sk"]
)
def test_real_ssh_keys_are_accepted(tmp_path: Path, make: Callable[[], str]) -> None:
    key = make()
    config = loaded(tmp_path, users=users_with_key(key))
    assert config.users[0].ssh_authorized_keys == (key,)


@pytest.mark.parametrize(
    "name",
    ["../../../../etc/cron.d/evil", "eth0/x", "", ".", "..", "a" * 16, "eth 0", "eth:0", "ethé"],
)
def test_interface_names_follow_the_kernels_rule(tmp_path: Path, name: str) -> None:
    network = f"network: {{ethernet: '{name}'}}"
    assert "interface name" in refused_at(tmp_path, "network.ethernet", network=network)


@pytest.mark.parametrize("name", ["eth0", "end0", "enx0123456789ab", "a" * 15, "br-lan.10"])
def test_real_interface_names_are_accepted(tmp_path: Path, name: str) -> None:
    config = loaded(tmp_path, network=f"network: {{ethernet: '{name}'}}")
    assert config.network.ethernet == name


@pytest.mark.parametrize(
    "zone",
    [
        "/etc/shadow",
        "../../../etc/shadow",
        "Europe/../../../etc/shadow",
        "Europe//Berlin",
        "Europe/",
    ],
)
def test_timezone_is_a_zone_name(tmp_path: Path, zone: str) -> None:
    refused_at(tmp_path, "timezone", extra=f"timezone: '{zone}'")


@pytest.mark.parametrize(
    ("users", "key"),
    [
        ("users: [{name: ops, shell: 'bash; touch /PWNED'}]", "users[0].shell"),
        ("users: [{name: ops, shell: ../bin/sh}]", "users[0].shell"),
        ("users: [{name: ops, groups: ['adm,sudo']}]", "users[0].groups[0]"),
        ("users: [{name: ops, groups: ['$(id)']}]", "users[0].groups[0]"),
    ],
)
def test_shells_and_groups_are_what_they_claim(tmp_path: Path, users: str, key: str) -> None:
    refused_at(tmp_path, key, users=users)


def test_ssid_has_at_most_32_bytes(tmp_path: Path) -> None:
    network = "network:\n  wifi: {ssid: '" + "é" * 17 + "', country: DE}"
    assert "32 bytes" in refused_at(tmp_path, "network.wifi.ssid", network=network)
    devices = "devices: [{hostname: pi-1, wifi: {ssid: '" + "é" * 17 + "', country: DE}}]"
    refused_at(tmp_path, "devices[0].wifi.ssid", devices=devices)


def test_timezone_must_exist_in_the_image(fleet_dir: Path) -> None:
    """The synthetic image has /usr/share/zoneinfo/Europe/Berlin and no tz database list:
    a zone's own file decides. Before: an image without tzdata.zi accepted any name."""
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(extra="timezone: Asia/Tokyo"))
    proc = pifleet("build", "fleet.yaml", cwd=fleet_dir, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("pifleet: ")]
    assert errors == [
        "pifleet: error: fleet.yaml: timezone: 'Asia/Tokyo' is not a time zone"
        " of the image (no /usr/share/zoneinfo/Asia/Tokyo in it)"
    ]
    (fleet_dir / "fleet.yaml").write_text(fleet_yaml(extra="timezone: Europe/Berlin"))
    proc = pifleet("build", "fleet.yaml", cwd=fleet_dir, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "passphrase", ["tab\there-1", "délicieux-1", "new\nline-12", "del\x7fchar-1"]
)
def test_wpa_passphrase_is_printable_ascii(
    monkeypatch: pytest.MonkeyPatch, passphrase: str
) -> None:
    """IEEE 802.11i: 8 to 63 characters of ASCII 32-126; anything else is refused in one line
    that never shows it."""
    from builder.config.model import Wifi
    from builder.seed.base import wifi_password

    monkeypatch.setenv("PIFLEET_TEST_PSK", passphrase)
    with pytest.raises(UserError) as info:
        wifi_password(Wifi("edge", "DE", "PIFLEET_TEST_PSK", False), "fleet.yaml")
    assert "printable ASCII" in str(info.value) and passphrase not in str(info.value)
    assert "\n" not in str(info.value)
