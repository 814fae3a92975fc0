"""Checks of single config values: Kubernetes labels and taints, static addresses, sizes.

Each check that can fail takes `fail(key, message)`, which builds the error, so the
fleet file and a devices_file inventory word it for their own reader.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from builder.config.model import StaticAddress
from builder.util.errors import UserError

Fail = Callable[[str, str], UserError]

_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_TAINT = re.compile(
    r"^(?P<key>[^=:]+)(=(?P<value>[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?)?"
    r":(?P<effect>NoSchedule|PreferNoSchedule|NoExecute)$"
)
_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([KMGT]?)(i?B?)$")


def _valid_label_key(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and not _LABEL_PREFIX.match(prefix):
        return False
    return bool(_LABEL_NAME.match(name))


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def static_address(
    address: str, gateway: str | None, dns: list[str], key: str, fail: Any
) -> StaticAddress:
    """A checked static address; `fail(key, message)` builds the error."""
    try:
        iface = ipaddress.ip_interface(address)
    except ValueError:
        raise fail(
            f"{key}.address", f"must be an address with prefix such as 10.0.0.5/24, got {address!r}"
        ) from None
    if "/" not in address:
        raise fail(f"{key}.address", f"needs a prefix length such as /24, got {address!r}")
    if gateway is not None:
        try:
            gw = ipaddress.ip_address(gateway)
        except ValueError:
            raise fail(f"{key}.gateway", f"must be an IP address, got {gateway!r}") from None
        if gw not in iface.network:
            raise fail(f"{key}.gateway", f"{gateway} is not in {iface.network}")
    for i, server in enumerate(dns):
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise fail(f"{key}.dns[{i}]", f"must be an IP address, got {server!r}") from None
    return StaticAddress(address=address, gateway=gateway, dns=tuple(dns))


def parse_size(text: str) -> int:
    """'4G', '3500M', '4GiB', '1073741824' -> bytes (powers of 1024)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise UserError(f"not a size: {text!r} (expected e.g. 4G or 3500M)")
    number, unit = float(match.group(1)), match.group(2)
    return int(number * 1024 ** " KMGT".index(unit or " "))
