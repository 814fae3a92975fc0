"""Per-device identity made on the host: SSH host key, K3s node password, known_hosts.

Kept in the operator's output (`<out>/devices/<host>/`, 0700 directories whatever
the umask, 0600 files) and reused on every later personalization, so a reflashed device
comes back with the same host key (no SSH warning) and the same node password (the
server accepts it under its old name instead of "Node password rejected"). A stored
identity is used only when it is the user's own and nobody else may write it.
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
from builder.util.batch import Batch
from builder.util.errors import UserError
from builder.util.private import make_private_dirs, require_own, write_private
from builder.util.secret import Secret

HOST_KEY_FILE = "ssh_host_ed25519_key"
HOST_KEY_PUB_FILE = "ssh_host_ed25519_key.pub"
NODE_PASSWORD = "node-password"


@dataclass(frozen=True)
class DeviceIdentity:
    hostname: str
    host_key: HostKey
    node_password: Secret


def identity_dir(out_dir: Path, hostname: str) -> Path:
    return out_dir / "devices" / hostname


def load_identity(out_dir: Path, hostname: str) -> DeviceIdentity | None:
    """The stored identity of `hostname`, or None when there is none (or it is incomplete).

    Refused in one line: a `devices` or identity folder, or an identity file, that is not
    this user's own, is a symlink, or that group or others may write: another user could
    have planted a host key and node password the device would then carry.
    """
    devices = out_dir / "devices"
    directory = identity_dir(out_dir, hostname)
    for folder in (devices, directory):
        if not os.path.lexists(folder):
            return None
        require_own(folder, f"the identity of {hostname}", directory=True)
    paths = [directory / n for n in (HOST_KEY_FILE, HOST_KEY_PUB_FILE, NODE_PASSWORD)]
    if not all(os.path.lexists(p) for p in paths):
        return None
    for path in paths:
        require_own(path, f"the identity of {hostname}", directory=False)
    return _load(directory, hostname)


def new_identity(hostname: str) -> tuple[DeviceIdentity, dict[str, bytes]]:
    """A fresh host key and node password, and the files that store them."""
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
    identity = DeviceIdentity(
        hostname, HostKey(private=private, public=public_line), Secret(password)
    )
    files = {
        HOST_KEY_FILE: private.encode(),
        HOST_KEY_PUB_FILE: (public_line + "\n").encode(),
        NODE_PASSWORD: (password + "\n").encode(),
    }
    return identity, files


def ensure_identity(out_dir: Path, hostname: str, rotate: bool = False) -> DeviceIdentity:
    """The stored identity of `hostname`, made (or remade with `rotate`) when absent."""
    stored = None if rotate else load_identity(out_dir, hostname)
    if stored is not None:
        return stored
    directory = identity_dir(out_dir, hostname)
    make_private_dirs(directory)
    for folder in (directory.parent, directory):
        require_own(folder, f"the identity of {hostname}", directory=True)
    os.chmod(directory, 0o700)  # an existing folder too
    identity, files = new_identity(hostname)
    for name, data in files.items():
        write_atomic(directory / name, data, 0o600)
    return identity


def stage_identity(batch: Batch, out_dir: Path, hostname: str) -> DeviceIdentity:
    """The stored identity of `hostname`, or a new one staged in `batch` (it appears in
    `out_dir` with the run's other outputs, or not at all)."""
    stored = load_identity(out_dir, hostname)
    if stored is not None:
        return stored
    directory = identity_dir(out_dir, hostname)
    for folder in (directory.parent, directory):
        if os.path.lexists(folder):  # an incomplete identity: its folder is reused
            require_own(folder, f"the identity of {hostname}", directory=True)
    identity, files = new_identity(hostname)
    for name, data in files.items():
        write_private(batch.file(directory / name), data)
    return identity


def _load(directory: Path, hostname: str) -> DeviceIdentity:
    try:
        private = (directory / HOST_KEY_FILE).read_text()
        public = (directory / HOST_KEY_PUB_FILE).read_text().strip()
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


def write_known_hosts(out_dir: Path, lines: list[str], batch: Batch | None = None) -> Path:
    """Merge `lines` into `<out>/known_hosts`, one line per host (a rotated key replaces the
    old); staged in `batch` when given."""
    path = out_dir / "known_hosts"
    entries: dict[str, str] = {}
    if os.path.lexists(path):
        require_own(path, "known_hosts", directory=False)
        for line in path.read_text().splitlines():
            if line.strip():
                entries[line.split()[0].split(",")[0]] = line
    for line in lines:
        entries[line.split()[0].split(",")[0]] = line
    data = "".join(f"{entries[h]}\n" for h in sorted(entries)).encode()
    if batch is None:
        write_atomic(path, data, 0o644)
    else:
        write_private(batch.file(path, 0o644), data)
    return path
