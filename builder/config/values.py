"""Checks of single config values: Kubernetes labels and taints, static addresses, sizes,
SSH public keys and network interface names.

Each check that can fail takes `fail(key, message)`, which builds the error, so the
fleet file and a devices_file inventory word it for their own reader.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import struct
from collections.abc import Callable
from typing import Any

from builder.config.model import StaticAddress
from builder.util.errors import UserError
from builder.util.yamlfile import shown

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
            f"{key}.address",
            f"must be an address with prefix such as 10.0.0.5/24, got {shown(address)}",
        ) from None
    if "/" not in address:
        raise fail(f"{key}.address", f"needs a prefix length such as /24, got {shown(address)}")
    problem = _reserved(iface)
    if problem:
        raise fail(f"{key}.address", f"{iface.ip} is {problem} of {iface.network}")
    if gateway is not None:
        try:
            gw = ipaddress.ip_address(gateway)
        except ValueError:
            raise fail(f"{key}.gateway", f"must be an IP address, got {shown(gateway)}") from None
        if gw not in iface.network:
            raise fail(f"{key}.gateway", f"{gateway} is not in {iface.network}")
    for i, server in enumerate(dns):
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise fail(f"{key}.dns[{i}]", f"must be an IP address, got {shown(server)}") from None
    return StaticAddress(address=address, gateway=gateway, dns=tuple(dns))


def _reserved(
    iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
) -> str | None:
    """Why the interface's address cannot be a host's (None: it can): a network's own
    address (IPv6: its Subnet-Router anycast address) or its IPv4 broadcast address. A /31
    or /32 (/127, /128) has no such addresses (RFC 3021, RFC 6164)."""
    net = iface.network
    if net.prefixlen >= net.max_prefixlen - 1:
        return None
    if iface.ip == net.network_address:
        return "the network address"
    if isinstance(net, ipaddress.IPv4Network) and iface.ip == net.broadcast_address:
        return "the broadcast address"
    return None


def parse_size(text: str) -> int:
    """'4G', '3500M', '4GiB', '1073741824' -> bytes (powers of 1024)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise UserError(f"not a size: {shown(text)} (expected e.g. 4G or 3500M)")
    number, unit = float(match.group(1)), match.group(2)
    return int(number * 1024 ** " KMGT".index(unit or " "))


# OpenSSH's public key types (sshkey.c keytypes[]); the *-cert-v01 forms are certificates.
SSH_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ssh-dss",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
_CERT = "-cert-v01@openssh.com"


def ssh_key_problem(text: str) -> str | None:
    """Why `text` is not one authorized_keys line `<type> <base64> [comment]` (None: it is):
    a known type, and a key blob that names the same type (and, for plain keys, parses)."""
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    words = text.split(None, 2)
    kind = words[0] if words else ""
    if kind.removesuffix(_CERT) not in SSH_KEY_TYPES:
        return "an OpenSSH public key such as 'ssh-ed25519 AAAA... comment' (no options)"
    try:
        blob = base64.b64decode(words[1] if len(words) > 1 else "", validate=True)
        (length,) = struct.unpack(">I", blob[:4])
    except (binascii.Error, struct.error):
        return f"an OpenSSH public key: the part after {kind} is not a base64 key"
    if blob[4 : 4 + length] != kind.encode():
        return f"an OpenSSH public key: the key data is not a {kind} key"
    if kind.endswith(_CERT) or kind.startswith("sk-"):
        return None
    try:
        load_ssh_public_key(f"{kind} {words[1]}".encode())
    except (ValueError, TypeError):
        return f"an OpenSSH public key: the {kind} key data does not parse"
    return None


MAX_IFNAME = 15  # IFNAMSIZ - 1 (include/uapi/linux/if.h)
_IFNAME = re.compile(r"[A-Za-z0-9_.-]+")


def interface_problem(name: str) -> str | None:
    """Why `name` cannot name a network interface (None: it can): the kernel's dev_valid_name
    (1-15 characters, no '/', ':' or whitespace, not '.' or '..'), within the characters
    rpi-preseed accepts for one (letters, digits, '_', '.', '-'), which need no quoting in any
    file that names the interface."""
    if not 1 <= len(name) <= MAX_IFNAME:
        return f"an interface name of 1 to {MAX_IFNAME} characters"
    if name in (".", ".."):
        return "an interface name, not '.' or '..'"
    if not _IFNAME.fullmatch(name):
        return "an interface name of letters, digits, '_', '.' and '-'"
    return None
