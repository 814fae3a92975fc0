"""Per-device identity made on the host: SSH host key, K3s node password, known_hosts.

Kept in the operator's output (`<out>/devices/<host>/`, 0700 directory, 0600
files) and reused on every later personalization, so a reflashed device comes
back with the same host key (no SSH warning) and the same node password (the
server accepts it under its old name instead of "Node password rejected").
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from builder.seed.base import HostKey
from builder.util.atomic import write_atomic
from builder.util.errors import UserError
from builder.util.secret import Secret

PRIVATE = "ssh_host_ed25519_key"
PUBLIC = "ssh_host_ed25519_key.pub"
NODE_PASSWORD = "node-password"


@dataclass(frozen=True)
class DeviceIdentity:
    hostname: str
    host_key: HostKey
    node_password: Secret


def identity_dir(out_dir: Path, hostname: str) -> Path:
    return out_dir / "devices" / hostname


def ensure_identity(out_dir: Path, hostname: str, rotate: bool = False) -> DeviceIdentity:
    """The stored identity of `hostname`, made (or remade with `rotate`) when absent."""
    directory = identity_dir(out_dir, hostname)
    paths = [directory / n for n in (PRIVATE, PUBLIC, NODE_PASSWORD)]
    if not rotate and all(p.exists() for p in paths):
        return _load(directory, hostname)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # an existing folder too
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    public_line = f"{public} root@{hostname}"
    # K3s makes its node password the same way: 16 random bytes, hex.
    password = secrets.token_hex(16)
    write_atomic(directory / PRIVATE, private.encode(), 0o600)
    write_atomic(directory / PUBLIC, (public_line + "\n").encode(), 0o600)
    write_atomic(directory / NODE_PASSWORD, (password + "\n").encode(), 0o600)
    return DeviceIdentity(hostname, HostKey(private=private, public=public_line), Secret(password))


def _load(directory: Path, hostname: str) -> DeviceIdentity:
    try:
        private = (directory / PRIVATE).read_text()
        public = (directory / PUBLIC).read_text().strip()
        password = (directory / NODE_PASSWORD).read_text().strip()
        serialization.load_ssh_private_key(private.encode(), password=None)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{directory}: the stored identity of {hostname} is unreadable ({exc}); "
            "fix it or rotate it"
        ) from None
    if not public.startswith("ssh-ed25519 ") or len(password) < 16:
        raise UserError(f"{directory}: the stored identity of {hostname} is malformed; rotate it")
    return DeviceIdentity(hostname, HostKey(private=private, public=public), Secret(password))


def known_hosts_line(identity: DeviceIdentity, address: str | None = None) -> str:
    """`host[,address] ssh-ed25519 AAAA...` for the operator's known_hosts."""
    names = identity.hostname if address is None else f"{identity.hostname},{address.split('/')[0]}"
    key_type, key_data = identity.host_key.public.split()[:2]
    return f"{names} {key_type} {key_data}"


def write_known_hosts(out_dir: Path, lines: list[str]) -> Path:
    """Merge `lines` into `<out>/known_hosts`, one line per host (a rotated key replaces the old)."""
    path = out_dir / "known_hosts"
    entries: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                entries[line.split()[0].split(",")[0]] = line
    for line in lines:
        entries[line.split()[0].split(",")[0]] = line
    write_atomic(path, "".join(f"{entries[h]}\n" for h in sorted(entries)).encode(), 0o644)
    return path
