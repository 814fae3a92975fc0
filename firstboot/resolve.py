"""Resolve the server's name as K3s does: /etc/hosts, then the DNS servers of /etc/resolv.conf.

K3s is a static binary built with Go's own resolver (netgo): it never calls NSS, so a name
that only avahi's nss-mdns (`.local`) or another NSS module knows never resolves for it,
although glibc's getaddrinfo, and so every other program on the Pi, finds it.

| rule | source |
|---|---|
| K3s never resolves mDNS / `.local` names (no NSS in a static musl/netgo binary) | k3s-io/k3s#9748 |
| order: the hosts file, then DNS; nsswitch.conf's other sources (mdns, myhostname) are not used | Go net/conf.go:hostLookupOrder (netgo) |
| a name with fewer dots than `ndots` (default 1) tries the search domains first, then itself; a rooted name only itself | Go net/dnsclient_unix.go:nameList |
| each nameserver in turn, over UDP, A and AAAA, a few seconds each (Go: 5 s, 2 attempts) | Go net/dnsconfig_unix.go; dnsclient_unix.go:tryOneName |
| at most 3 nameservers (later lines are ignored) | Go net/dnsconfig_unix.go (MAXNS, "small, but the standard limit") |
| a connected UDP socket, so only the nameserver's own address is heard; a random query id; a reply counts only with that id, the response bit and our question (else the next datagram is read, until the timeout) | Go net/dnsclient_unix.go:dnsPacketRoundTrip, checkResponse |
| a malformed or truncated answer is no answer, never an error | Go net/dnsclient_unix.go (dnsmessage parse errors) |

The DNS query is a plain RFC 1035 A/AAAA question over UDP; only the addresses in the answer
count (a CNAME chain's final A/AAAA records are in the same answer section).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
from typing import List, Optional, Tuple

from firstboot.paths import Root

HOSTS = "/etc/hosts"
RESOLV_CONF = "/etc/resolv.conf"
TYPES = (1, 28)  # A, AAAA
TIMEOUT = 2.0
MAX_SERVERS = 3  # Go reads no more nameservers than glibc uses


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def _lines(root: Root, path: str) -> List[List[str]]:
    try:
        text = root(path).read_text(errors="replace")
    except OSError:
        return []
    return [line.split("#", 1)[0].split() for line in text.splitlines()]


def from_hosts(root: Root, name: str) -> List[str]:
    wanted = name.lower().rstrip(".")
    return [
        f[0] for f in _lines(root, HOSTS) if len(f) > 1 and wanted in (n.lower() for n in f[1:])
    ]


def resolv_conf(root: Root) -> Tuple[List[str], List[str], int]:
    """(nameservers, search domains, ndots) as Go reads resolv.conf."""
    servers: List[str] = []
    search: List[str] = []
    ndots = 1
    for fields in _lines(root, RESOLV_CONF):
        if len(fields) > 1 and fields[0] == "nameserver" and is_address(fields[1]):
            if len(servers) < MAX_SERVERS:
                servers.append(fields[1])
        elif fields and fields[0] in ("search", "domain"):
            search = [d.rstrip(".") for d in fields[1:]]
        elif fields and fields[0] == "options":
            for option in fields[1:]:
                if option.startswith("ndots:") and option[6:].isdigit():
                    ndots = min(int(option[6:]), 15)
    return servers, search, ndots


def names_to_try(name: str, search: List[str], ndots: int) -> List[str]:
    if name.endswith("."):
        return [name.rstrip(".")]
    suffixed = [name + "." + domain for domain in search if domain]
    return [name, *suffixed] if name.count(".") >= ndots else [*suffixed, name]


def encode_name(name: str) -> bytes:
    """`name`'s labels as a DNS question writes them; UnicodeError for a name DNS cannot carry
    (an empty or over-long label, from resolv.conf's search line for instance)."""
    return b"".join(bytes([len(p)]) + p for p in name.encode("idna").split(b".") if p) + b"\0"


def query(name: str, qtype: int) -> Tuple[int, bytes]:
    """(id, packet): a recursive question for `name`."""
    ident = int.from_bytes(os.urandom(2), "big")
    header = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    return ident, header + encode_name(name) + struct.pack(">HH", qtype, 1)


def _skip_name(packet: bytes, offset: int) -> int:
    while True:
        length = packet[offset]
        if length & 0xC0 == 0xC0:
            return offset + 2
        if length == 0:
            return offset + 1
        offset += 1 + length


def addresses(packet: bytes, ident: int, question: Optional[bytes] = None) -> Optional[List[str]]:
    """The A/AAAA addresses of an answer to question `ident` ([] for NXDOMAIN, no data or a
    malformed answer); None when the packet is no answer to it (another id, not a response,
    or another question than `question`, the query's bytes after its header)."""
    if len(packet) < 12:
        return None
    got, flags, qdcount, ancount = struct.unpack(">HHHH", packet[:8])
    if got != ident or not flags & 0x8000:
        return None
    if question is not None and (
        qdcount != 1 or packet[12 : 12 + len(question)].lower() != question.lower()
    ):
        return None
    if flags & 0x000F:
        return []
    offset, found = 12, []
    try:
        for _ in range(qdcount):
            offset = _skip_name(packet, offset) + 4
        for _ in range(ancount):
            offset = _skip_name(packet, offset)
            rtype, _cls, _ttl, size = struct.unpack(">HHIH", packet[offset : offset + 10])
            data = packet[offset + 10 : offset + 10 + size]
            offset += 10 + size
            if len(data) != size:
                return []  # truncated: no answer
            if (rtype, size) in ((1, 4), (28, 16)):
                found.append(str(ipaddress.ip_address(data)))
    except (IndexError, struct.error, ValueError):
        return []
    return found


def _round_trip(sock: socket.socket, packet: bytes, ident: int, timeout: float) -> List[str]:
    """Send the question; read datagrams until one answers it or `timeout` has passed."""
    deadline = time.monotonic() + timeout
    sock.send(packet)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return []
        sock.settimeout(left)
        found = addresses(sock.recv(4096), ident, packet[12:])
        if found is not None:
            return found


def ask(server: str, port: int, name: str, timeout: float = TIMEOUT) -> List[str]:
    """A and AAAA for `name` from one DNS server over UDP; [] on no answer."""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    found: List[str] = []
    for qtype in TYPES:
        try:
            ident, packet = query(name, qtype)
        except UnicodeError:
            return []  # DNS cannot carry this name
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect((server, port))  # the kernel drops datagrams from elsewhere
                found += _round_trip(sock, packet, ident, timeout)
            except OSError:
                continue
    return found


def dns_port(root: Root) -> int:
    """53; under --root (tests) PIFLEET_DNS_PORT may move it to a test server's port."""
    if not root.is_real and os.environ.get("PIFLEET_DNS_PORT", "").isdigit():
        return int(os.environ["PIFLEET_DNS_PORT"])
    return 53


def as_k3s(root: Root, name: str) -> List[str]:
    """The addresses K3s would connect to for `name`: the hosts file, else DNS."""
    if is_address(name):
        return [name.strip("[]")]
    found = from_hosts(root, name)
    if found:
        return found
    servers, search, ndots = resolv_conf(root)
    for candidate in names_to_try(name, search, ndots):
        for server in servers:
            found = ask(server, dns_port(root), candidate)
            if found:
                return found
    return []


def nss_only(name: str, port: int) -> bool:
    """Whether glibc's getaddrinfo (NSS: mDNS, myhostname, ...) resolves `name`."""
    try:
        return bool(socket.getaddrinfo(name, port, type=socket.SOCK_STREAM))
    except (socket.gaierror, UnicodeError):
        return False


def problem(root: Root, host: str, port: int) -> Optional[Tuple[bool, str]]:
    """None when K3s can resolve `host`; else (final, why): final when only NSS knows it."""
    if as_k3s(root, host):
        return None
    servers = resolv_conf(root)[0]
    where = (
        "/etc/hosts and the DNS servers of /etc/resolv.conf ("
        + (", ".join(servers) or "none")
        + ")"
    )
    if nss_only(host, port):
        return True, (
            host
            + " resolves only through NSS (mDNS/.local or another NSS module), not through "
            + where
            + ": K3s never uses NSS or mDNS, so it could not reach the server; use a DNS "
            "name or an IP address in cluster.server (or this device's /etc/hosts)"
        )
    return False, "cannot resolve " + host + " through " + where
