"""Is the network up enough to join: a default route, and the server's name resolves as K3s
resolves it (firstboot/resolve.py)."""

from __future__ import annotations

from typing import Optional, Tuple
from urllib.parse import urlsplit

from firstboot import resolve
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


def resolve_problem(root: Root, server: str) -> Tuple[bool, Optional[str]]:
    """(final, why) when the server's host name does not resolve as K3s resolves it (the hosts
    file, then DNS: firstboot/resolve.py), (False, None) when it does; final when only NSS
    (mDNS) knows the name."""
    parts = urlsplit(server)
    found = resolve.problem(root, str(parts.hostname), parts.port or 443)
    return found if found else (False, None)
