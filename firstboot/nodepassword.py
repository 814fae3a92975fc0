"""K3s's node password file, made by the agent before K3s starts so a power cut cannot empty it.

| K3s rule | K3s file:function |
|---|---|
| the password is 16 random bytes as 32 lowercase hex characters plus a newline, in /etc/rancher/node/password, mode 0600 | pkg/agent/config/config.go:ensureNodePassword |
| a file that exists is read and trimmed, never regenerated, even when empty; it is written with no fsync | config.go:ensureNodePassword |
| an empty password header is refused with 400 `node password not set`, on every retry | pkg/nodepassword/validate.go:getNodeInfo |

So an empty file left by a power cut after K3s created it stops the join for good. The agent
writes the file itself (atomically, fsynced, 0600 from its first byte) before K3s first
runs; one that holds a password K3s can send is kept, an empty or damaged one is replaced.
"""

from __future__ import annotations

import os
import string
from typing import Optional

from firstboot.k3sfiles import NODE_PASSWORD_PATH
from firstboot.paths import Root, write_atomic

SENDABLE = set(string.ascii_letters + string.digits + string.punctuation)


def usable(data: Optional[bytes]) -> bool:
    """Whether K3s would send this file's content as a node password (trimmed, non-empty,
    one header-safe word)."""
    if data is None:
        return False
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        return False
    return bool(text) and set(text) <= SENDABLE


def generate() -> bytes:
    """A password as K3s makes one: 16 random bytes in hex, and a newline."""
    return (os.urandom(16).hex() + "\n").encode()


def ensure(root: Root) -> Optional[str]:
    """Make sure K3s finds a usable password; what was done, or None when the file was kept."""
    target = root(NODE_PASSWORD_PATH)
    try:
        current: Optional[bytes] = target.read_bytes()
    except FileNotFoundError:
        current = None
    if usable(current):
        if target.stat().st_mode & 0o777 != 0o600:
            os.chmod(str(target), 0o600)
        return None
    write_atomic(target, generate(), 0o600)
    if current is None:
        return "node password created in " + NODE_PASSWORD_PATH + " (fsynced, 0600)"
    return (
        NODE_PASSWORD_PATH + " was empty or damaged (a power cut after K3s wrote it, which K3s "
        "never repairs); replaced with a new one"
    )
