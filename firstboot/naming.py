"""How the node is named: the configured host name, else `hostname_pattern` with the Pi's
serial number (the machine-id where the board has none), lowercase RFC 1123."""

from __future__ import annotations

import re
from typing import Optional

from firstboot.joinconfig import valid_hostname
from firstboot.paths import Root

SERIAL_PATHS = ("/sys/firmware/devicetree/base/serial-number",)


class NamingError(ValueError):
    pass


def board_serial(root: Root) -> Optional[str]:
    for path in SERIAL_PATHS:
        try:
            raw = root(path).read_bytes().replace(b"\0", b"").decode("ascii", "replace").strip()
        except OSError:
            continue
        if raw:
            return raw.lower()
    try:
        for line in root("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Serial" and value.strip().strip("0"):
                return value.strip().lower()
    except OSError:
        pass
    return None


def machine_serial(root: Root) -> Optional[str]:
    try:
        value = root("/etc/machine-id").read_text().strip().lower()
    except OSError:
        return None
    if re.match(r"^[0-9a-f]{32}$", value):
        return value[:16]
    return None


def node_name(root: Root, configured: Optional[str], pattern: str) -> str:
    if configured:
        name = configured
    else:
        serial = board_serial(root) or machine_serial(root)
        if serial is None:
            raise NamingError(
                "no serial number and no machine-id to name this node from " + pattern
            )
        name = pattern.replace("{serial}", re.sub(r"[^a-z0-9-]", "-", serial))
    name = name.lower()
    if not valid_hostname(name):
        raise NamingError("node name " + repr(name) + " is not a valid RFC 1123 host name")
    return name


def set_hostname(root: Root, name: str) -> None:
    """Make the system use `name` now and after reboot (/etc/hostname, /etc/hosts)."""
    from firstboot.paths import write_atomic

    write_atomic(root("/etc/hostname"), (name + "\n").encode(), 0o644)
    hosts_path = root("/etc/hosts")
    try:
        lines = hosts_path.read_text().splitlines()
    except OSError:
        lines = ["127.0.0.1\tlocalhost"]
    lines = [ln for ln in lines if not ln.startswith("127.0.1.1")] + ["127.0.1.1\t" + name]
    write_atomic(hosts_path, ("\n".join(lines) + "\n").encode(), 0o644)
    if root.is_real:
        import contextlib
        import socket

        with contextlib.suppress(OSError):  # a later boot applies /etc/hostname anyway
            socket.sethostname(name)
