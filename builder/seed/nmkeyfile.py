"""Network settings as files the device's network stack reads: NetworkManager keyfiles
(Raspberry Pi OS Bookworm and later) and systemd-networkd .network files (plain Debian).

The Wi-Fi keyfile has the fields raspberrypi-sys-mods' `imager_custom set_wlan` writes to
preconfigured.nmconnection (id, type wifi, infrastructure mode, ssid, hidden, ipv4/ipv6 auto,
wpa-psk); the uuid is derived from the SSID so the same input gives the same file.
"""

from __future__ import annotations

import uuid

from builder.config.model import StaticAddress, Wifi

NAMESPACE = uuid.UUID("6d2f0c1e-2b7a-4f55-9a55-70a1f1ee7000")  # pifleet's, for uuid5


def wifi_keyfile(wifi: Wifi, psk: str | None) -> str:
    lines = [
        "[connection]",
        "id=preconfigured",
        f"uuid={uuid.uuid5(NAMESPACE, 'wifi:' + wifi.ssid)}",
        "type=wifi",
        "",
        "[wifi]",
        "mode=infrastructure",
        f"ssid={_keyfile_value(wifi.ssid)}",
        f"hidden={'true' if wifi.hidden else 'false'}",
        "",
        "[ipv4]",
        "method=auto",
        "",
        "[ipv6]",
        "addr-gen-mode=default",
        "method=auto",
        "",
        "[proxy]",
    ]
    if psk:
        lines += ["", "[wifi-security]", "key-mgmt=wpa-psk", f"psk={psk}"]
    return "\n".join(lines) + "\n"


def ethernet_keyfile(interface: str, static: StaticAddress) -> str:
    ipv4 = [f"address1={static.address}" + (f",{static.gateway}" if static.gateway else "")]
    if static.dns:
        ipv4.append("dns=" + "".join(f"{d};" for d in static.dns))
    return (
        "\n".join(
            [
                "[connection]",
                f"id=pifleet-{_keyfile_value(interface)}",
                f"uuid={uuid.uuid5(NAMESPACE, 'ethernet:' + interface)}",
                "type=ethernet",
                f"interface-name={_keyfile_value(interface)}",
                "autoconnect-priority=10",
                "",
                "[ipv4]",
                "method=manual",
                *ipv4,
                "",
                "[ipv6]",
                "method=auto",
            ]
        )
        + "\n"
    )


def networkd_file(interface: str, static: StaticAddress) -> str:
    lines = ["[Match]", f"Name={interface}", "", "[Network]", f"Address={static.address}"]
    if static.gateway:
        lines.append(f"Gateway={static.gateway}")
    lines += [f"DNS={d}" for d in static.dns]
    return "\n".join(lines) + "\n"


def _keyfile_value(text: str) -> str:
    """A keyfile string value: backslash, ';' and line breaks escaped, and a leading space
    as `\\s`, which GKeyFile would otherwise strip (GKeyFile rules)."""
    escaped = (
        text.replace("\\", "\\\\").replace(";", "\\;").replace("\n", "\\n").replace("\r", "\\r")
    )
    return "\\s" + escaped[1:] if escaped.startswith(" ") else escaped
