"""The boot partition read-only: found, and made writable again, so the secrets can go.

The boot partition is FAT, which has no journal: a power cut in the middle of a FAT write
can leave a directory entry and the allocation table disagreeing. At the first touch of
such damage the kernel remounts the partition read-only (FAT's default `errors=remount-ro`,
fs/fat/misc.c `__fat_fs_error`), and every later write fails with EROFS. The agent must
still take its token and node password off the card, so when the partition is read-only it
remounts it read-write (fs/fat/inode.c `fat_reconfigure` allows it) and says so. Raspberry
Pi OS repairs the damage itself at the next boot: its fstab gives the boot partition fsck
pass 2 and it ships dosfstools (RPi-Distro/pi-gen stage1 `files/fstab`, stage2
`01-sys-tweaks/00-packages`).

Found when the QEMU power cuts in verify and then in start (tests/test_boot_faults.py) left
the partition damaged: the third boot joined, could not remove the token, and never ended.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from typing import Callable, Optional

from firstboot import paths
from firstboot.retry import Terminal


def read_only(mount: Path) -> bool:
    """Whether `mount` is a mount point mounted read-only."""
    try:
        return os.path.ismount(str(mount)) and bool(os.statvfs(str(mount)).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def make_writable(mount: Path, say: Callable[[str], None]) -> bool:
    """Remount `mount` read-write when it is mounted read-only; True when it was and is now
    writable. `say` gets one line either way."""
    if not read_only(mount):
        return False
    reason = _remount(mount)
    if reason is None and not read_only(mount):
        say(
            "the boot partition "
            + str(mount)
            + " was read-only (the kernel stops writing a FAT it finds damaged, as a power"
            " cut can leave it): remounted it read-write"
        )
        return True
    say(
        "the boot partition "
        + str(mount)
        + " is read-only and cannot be remounted: "
        + (reason or "it stayed read-only")
    )
    return False


def remove(path: Path, name: str, mount: Path, say: Callable[[str], None]) -> None:
    """Delete `path` (the device path `name`) if present; when the boot partition at `mount`
    went read-only meanwhile, remount it read-write and try once more. Terminal (one line)
    when it cannot be removed."""
    for attempt in (1, 2):
        try:
            paths.remove(path)
            return
        except OSError as exc:
            if exc.errno != errno.EROFS or attempt == 2 or not make_writable(mount, say):
                raise Terminal("cannot remove " + name + ": " + str(exc.strerror)) from None


def _remount(mount: Path) -> Optional[str]:
    try:
        done = subprocess.run(
            ["mount", "-o", "remount,rw", str(mount)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return lines[-1] if lines else "mount exited " + str(done.returncode)
    return None
