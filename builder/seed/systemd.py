"""`systemd` format: firstrun.sh in the boot partition, run once by `systemd.run=` (Raspberry Pi
OS Bookworm and the first Trixie release; any systemd image without cloud-init).

The script follows the structure Raspberry Pi Imager gives it (customization_generator.cpp,
`generateSystemdScript`): each block calls raspberrypi-sys-mods' `imager_custom` when the
image has it and falls back to plain commands otherwise. Where pifleet differs, and why:

| pifleet                                              | Imager                            |
|------------------------------------------------------|-----------------------------------|
| paths under the image's boot mount (/boot/firmware), | /boot/ paths, rewritten on the    |
| so no initramfs fix-up is needed                     | device by sys-mods' imager_fixup  |
| the footer removes exactly its three cmdline words   | `s| systemd.run.*||`: drops the  |
| (pifleet's cgroup words may follow them)             | rest of the line                  |
| any number of users, no passwords, with groups       | one user with a password hash     |
| Wi-Fi fallback: a NetworkManager keyfile when the    | wpa_supplicant.conf               |
| image has NetworkManager, else wpa_supplicant.conf   |                                   |
| static address, locale, interfaces, SSH host key     | (not written)                     |

The Wi-Fi passphrase never lands in the file: it carries the derived PSK, as Imager's does.
The script removes its kernel command-line words, then the system reboots
(`systemd.run_success_action=reboot`); the first-boot agent joins on the next boot, and
pifleet-custody.service zeroes and removes the script itself (it holds the PSK and the host
key; a FAT `rm` would leave its bytes in free clusters).
"""

from __future__ import annotations

from builder.config.model import Hardware, StaticAddress, User
from builder.layout import FIRSTRUN, FIRSTRUN_NAME, NM_CONNECTIONS, USERCONF
from builder.layout import IMAGER_CUSTOM as IC
from builder.seed import cmdline
from builder.seed.base import HostKey, ImageTraits, Seed, SeedFormat, SeedInput
from builder.seed.base import shell_quote as q
from builder.seed.nmkeyfile import ethernet_keyfile, networkd_file, wifi_keyfile

# The script's kernel command-line words: the two keys whose value follows, and the unit word.
RUN = "systemd.run="
RUN_SUCCESS = "systemd.run_success_action="
UNIT = "systemd.unit=kernel-command-line.target"


def cmdline_words(boot_mount: str) -> tuple[str, ...]:
    return (f"{RUN}{boot_mount}/{FIRSTRUN_NAME}", f"{RUN_SUCCESS}reboot", UNIT)


def render(inp: SeedInput, traits: ImageTraits) -> Seed:
    lines = ["#!/bin/sh", "", "set +e", ""]
    if inp.hostname:
        lines += _hostname(inp.hostname, traits)
    lines += ["FIRSTUSER=$(getent passwd 1000 | cut -d: -f1)"]
    for index, user in enumerate(inp.users):
        lines += _user(user, first=index == 0, traits=traits)
    if inp.host_key:
        lines += _host_key(inp.host_key)
    lines += _network(inp, traits)
    lines += _locale(inp, traits)
    lines += _interfaces(inp.hardware)
    lines += _footer(traits.boot_mount)
    script = "\n".join(lines) + "\n"
    return Seed({FIRSTRUN: script.encode()}, cmdline_words(traits.boot_mount))


# Needs no package: any systemd image runs `systemd.run=` (raspberrypi-sys-mods is optional).
FORMAT = SeedFormat(
    name="systemd",
    render=render,
    files=(FIRSTRUN,),
    sign=FIRSTRUN,
    cmdline_key=RUN.removesuffix("="),
)


def _if_ic(helper: list[str], fallback: list[str], available: bool) -> list[str]:
    """Imager's shape: the sys-mods helper when the file exists, else plain commands. Not
    indented: a quoted file body spanning lines must not gain indentation."""
    if not available:
        return fallback
    return [f"if [ -f {IC} ]; then", *helper, "else", *fallback, "fi"]


def _hostname(name: str, traits: ImageTraits) -> list[str]:
    return [
        "CURRENT_HOSTNAME=$(tr -d ' \\t\\n\\r' < /etc/hostname)",
        *_if_ic(
            [f"{IC} set_hostname {name}"],
            [
                f"echo {name} > /etc/hostname",
                f'sed -i "s/127.0.1.1.*$CURRENT_HOSTNAME/127.0.1.1\\t{name}/g" /etc/hosts',
            ],
            traits.imager_custom,
        ),
    ]


def _user(user: User, first: bool, traits: ImageTraits) -> list[str]:
    name, home = q(user.name), f"/home/{user.name}"
    if first and traits.userconf:
        # Renames the image's first user (uid 1000, with its Pi groups) and turns off the
        # interactive user wizard; '!' locks the password: keys only.
        create = [
            f'if [ -x {USERCONF} ] && [ -n "$FIRSTUSER" ]; then',
            f"{USERCONF} {name} '!'",
            "else",
            f"id -u {name} >/dev/null 2>&1 || useradd -m -s {q(user.shell)} {name}",
            "fi",
        ]
    else:
        create = [f"id -u {name} >/dev/null 2>&1 || useradd -m -s {q(user.shell)} {name}"]
    lines = [*create, f"usermod -s {q(user.shell)} {name}"]
    if user.groups:
        for group in user.groups:
            lines.append(f"getent group {q(group)} >/dev/null && usermod -a -G {q(group)} {name}")
    if user.sudo:
        drop_in = q(f"/etc/sudoers.d/010_{user.name}-nopasswd")
        lines += [
            f"echo {q(f'{user.name} ALL=(ALL) NOPASSWD:ALL')} > {drop_in}",
            f"chmod 0440 {drop_in}",
        ]
    if user.ssh_authorized_keys:
        lines += _keys(user, home, first and traits.imager_custom)
    return lines


def _keys(user: User, home: str, helper: bool) -> list[str]:
    keys = "\n".join(user.ssh_authorized_keys)
    plain = [
        f"install -o {q(user.name)} -m 700 -d {q(home + '/.ssh')}",
        *_write(home + "/.ssh/authorized_keys", keys),
        f"chown {q(user.name)}: {q(home + '/.ssh/authorized_keys')}",
        f"chmod 600 {q(home + '/.ssh/authorized_keys')}",
        "mkdir -p /etc/ssh/sshd_config.d",
        "echo 'PasswordAuthentication no' > /etc/ssh/sshd_config.d/10-pifleet.conf",
        "systemctl enable ssh",
    ]
    if not helper:
        return plain
    # imager_custom writes the keys for uid 1000, which is this user once renamed.
    call = f"{IC} enable_ssh -k " + " ".join(q(k) for k in user.ssh_authorized_keys)
    return _if_ic([call], plain, True)


def _host_key(key: HostKey) -> list[str]:
    return [
        "rm -f /etc/ssh/ssh_host_*",
        *_write("/etc/ssh/ssh_host_ed25519_key", key.private),
        "chmod 600 /etc/ssh/ssh_host_ed25519_key",
        f"echo {q(key.public)} > /etc/ssh/ssh_host_ed25519_key.pub",
        # Pi OS regenerates host keys on the next boot unless told otherwise.
        "systemctl disable regenerate_ssh_host_keys 2>/dev/null",
        "ssh-keygen -A",
    ]


def _network(inp: SeedInput, traits: ImageTraits) -> list[str]:
    lines: list[str] = []
    if inp.static is not None:
        lines += _static(inp.ethernet, inp.static, traits.network_manager)
    if inp.wifi is not None:
        lines += _wifi(inp, traits)
    elif inp.country:
        lines += _rfkill()
    return lines


def _static(ethernet: str, static: StaticAddress, network_manager: bool) -> list[str]:
    if network_manager:
        path = f"{NM_CONNECTIONS}/pifleet-{ethernet}.nmconnection"
        text = ethernet_keyfile(ethernet, static)
    else:
        path = f"/etc/systemd/network/10-pifleet-{ethernet}.network"
        text = networkd_file(ethernet, static)
    return [f"mkdir -p {q(path.rsplit('/', 1)[0])}", *_write(path, text), f"chmod 600 {q(path)}"]


def _wifi(inp: SeedInput, traits: ImageTraits) -> list[str]:
    wifi = inp.wifi
    assert wifi is not None
    psk = inp.wifi_psk
    args = (["-h"] if wifi.hidden else []) + [q(wifi.ssid)] + [q(psk or ""), q(wifi.country)]
    if traits.network_manager:
        path = f"{NM_CONNECTIONS}/preconfigured.nmconnection"
        plain = [
            f"mkdir -p {NM_CONNECTIONS}",
            *_write(path, wifi_keyfile(wifi, psk)),
            f"chmod 600 {path}",
            f"raspi-config nonint do_wifi_country {q(wifi.country)}",
        ]
    else:
        plain = _wpa_supplicant(wifi.ssid, psk, wifi.country, wifi.hidden)
    return _if_ic([f"{IC} set_wlan " + " ".join(args)], plain, traits.imager_custom) + _rfkill()


def _wpa_supplicant(ssid: str, psk: str | None, country: str, hidden: bool) -> list[str]:
    plain = ssid.isascii() and ssid.isprintable() and '"' not in ssid
    network = ["\tscan_ssid=1"] if hidden else []
    network += [f'\tssid="{ssid}"' if plain else f"\tssid={ssid.encode().hex()}"]
    if psk:
        network += ["\tkey_mgmt=WPA-PSK SAE", f"\tpsk={psk}", "\tieee80211w=1"]
    else:
        network += ["\tkey_mgmt=NONE"]
    text = (
        "\n".join(
            [
                f"country={country}",
                "ctrl_interface=DIR=/var/run/wpa_supplicant GROUP=netdev",
                "ap_scan=1",
                "",
                "update_config=1",
                "network={",
                *network,
                "}",
            ]
        )
        + "\n"
    )
    path = "/etc/wpa_supplicant/wpa_supplicant.conf"
    return [*_write(path, text), f"chmod 600 {path}"]


def _rfkill() -> list[str]:
    return [
        "rfkill unblock wifi",
        "for filename in /var/lib/systemd/rfkill/*:wlan ; do",
        '  echo 0 > "$filename"',
        "done",
    ]


def _locale(inp: SeedInput, traits: ImageTraits) -> list[str]:
    lines = []
    if inp.keyboard:
        lines += _if_ic(
            [f"{IC} set_keymap {q(inp.keyboard)}"],
            [
                *_write(
                    "/etc/default/keyboard",
                    f'XKBMODEL="pc105"\nXKBLAYOUT="{inp.keyboard}"\nXKBVARIANT=""\nXKBOPTIONS=""\n\n',
                ),
                "dpkg-reconfigure -f noninteractive keyboard-configuration",
            ],
            traits.imager_custom,
        )
    lines += _if_ic(
        [f"{IC} set_timezone {q(inp.timezone)}"],
        [
            "rm -f /etc/localtime",
            f"echo {q(inp.timezone)} > /etc/timezone",
            "dpkg-reconfigure -f noninteractive tzdata",
        ],
        traits.imager_custom,
    )
    # /etc/locale.gen already lists the locale (the build's locale step).
    lines += ["locale-gen", f"update-locale LANG={q(inp.locale)}"]
    return lines


def _interfaces(hardware: Hardware) -> list[str]:
    switches = [
        ("i2c", "do_i2c"),
        ("spi", "do_spi"),
        ("onewire", "do_onewire"),
        ("serial", "do_serial_hw"),
    ]
    lines = [f"raspi-config nonint {cmd} 0" for name, cmd in switches if getattr(hardware, name)]
    if hardware.usb_gadget:
        lines.append("rpi-usb-gadget on")
    return lines


def _footer(boot_mount: str) -> list[str]:
    """Take the run off the command line. The script itself stays: it holds the PSK and the
    host key, and a FAT `rm` would leave them in free clusters; pifleet-custody.service zeroes
    and removes it on the next boot, before the network (firstboot/custody.py)."""
    drop = [rf"s| {_bre(key)}[^ ]*||" for key in (RUN, RUN_SUCCESS)] + [rf"s| {_bre(UNIT)}||"]
    return [f"sed -i '{'; '.join(drop)}' {boot_mount}{cmdline.CMDLINE}", "exit 0"]


def _bre(text: str) -> str:
    """`text` as a sed basic regular expression matching itself (the words have only dots)."""
    return text.replace(".", r"\.")


def _write(path: str, text: str) -> list[str]:
    """`text` (its trailing newlines made one) into `path`, as one single-quoted word that no
    value can end early: a here-document ends at any line equal to its marker (an `EOF` key)."""
    body = q(text.rstrip("\n"))
    return [f"printf '%s\\n' {body} > {q(path)}"]
