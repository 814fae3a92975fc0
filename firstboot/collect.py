"""`python3 -m firstboot collect`: one tarball for support, with every secret removed.

It holds the card report, the agent's persisted state, the join config, the
K3s config, the last journal lines of the agent and K3s, and the facts a
person asks first (kernel command line, OS release, cgroup controllers, page
size). Every text goes through the `Redactor`, which also knows the exact
token and node password of this device; the tarball is 0600 from its first byte.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import tarfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

from firstboot import card, joinconfig, k3sfiles, secrets
from firstboot.paths import Root
from firstboot.redact import Redactor, secrets_in_config
from firstboot.state import STATE_FILE

FILES = (
    joinconfig.JOIN_CONFIG_PATH,
    STATE_FILE,
    k3sfiles.CONFIG_PATH,
    "/etc/os-release",
    "/proc/cmdline",
    "/sys/fs/cgroup/cgroup.controllers",
)


def _read(root: Root, path: str) -> Optional[str]:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return root(path).read_text()
    return None


def network_secrets(root: Root, boot_dir: str) -> List[str]:
    """Wi-Fi keys the device knows: the seed's network-config (on the boot partition or in
    custody), netplan, NetworkManager."""
    paths = secrets.NETWORK_CONFIG.places(boot_dir)
    for directory in ("/etc/netplan", "/etc/NetworkManager/system-connections"):
        with contextlib.suppress(OSError):
            paths += [directory + "/" + n for n in sorted(os.listdir(str(root(directory))))]
    found: List[str] = []
    for path in paths:
        found += secrets_in_config(_read(root, path) or "")
    return found


def _boot_dir(root: Root) -> str:
    text = _read(root, joinconfig.JOIN_CONFIG_PATH)
    with contextlib.suppress(joinconfig.JoinConfigError, TypeError):
        config = joinconfig.load_join_config((text or "").encode(), joinconfig.JOIN_CONFIG_PATH)
        return config.boot_dir.rstrip("/") + "/" + joinconfig.BOOT_SUBDIR
    return "/boot/firmware/" + joinconfig.BOOT_SUBDIR


def contents(root: Root) -> List[Tuple[str, str]]:
    """(name in the bundle, redacted text) for everything the bundle holds."""
    boot = _boot_dir(root)
    mount = boot.rsplit("/", 1)[0]
    known = [_read(root, p) or "" for p in secrets.paths(secrets.VALUES, mount)]
    known += network_secrets(root, mount)
    redactor = Redactor(known)
    items = []
    for path in (boot + "/" + card.REPORT_NAME, *FILES):
        text = _read(root, path)
        if text is not None:
            items.append((path.lstrip("/"), redactor.clean(text)))
    facts = "page size: " + str(os.sysconf("SC_PAGE_SIZE")) + "\nkernel: " + platform.release()
    items.append(("facts.txt", facts + "\n"))
    journal = "\n".join(redactor.lines(card.journal_tail()))
    items.append(("journal.txt", journal + "\n"))
    return items


def write_bundle(root: Root, output: Path) -> Path:
    """Write the bundle to `output` (0600, created new); its path."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in contents(root):
            data = text.encode()
            info = tarfile.TarInfo("pifleet-collect/" + name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(data))
    fd = os.open(str(output), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(buffer.getvalue())
    return output
