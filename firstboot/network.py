"""Is the network up enough to join: a default route, and the server's name resolves."""

from __future__ import annotations

import socket
from typing import Optional
from urllib.parse import urlsplit

from firstboot.paths import Root

RTF_UP = 0x1


def has_default_route(root: Root) -> bool:
    try:
        for line in root("/proc/net/route").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[1] == "00000000" and int(fields[3], 16) & RTF_UP:
                return True
    except OSError:
        pass
    try:
        for line in root("/proc/net/ipv6_route").read_text().splitlines():
            fields = line.split()
            if (
                len(fields) == 10
                and fields[0] == "0" * 32
                and fields[1] == "00"
                and fields[9] != "lo"
            ):
                return True
    except OSError:
        pass
    return False


def resolve_problem(server: str) -> Optional[str]:
    """None when the server's host name resolves, else why not."""
    parts = urlsplit(server)
    try:
        socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return "cannot resolve " + str(parts.hostname) + ": " + str(exc.strerror)
    return None
