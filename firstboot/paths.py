"""Every absolute path the agent touches goes through `Root`, so `--root DIR` can move
the whole device (/etc, /var, /proc, /sys, /boot) under a directory for tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

PathLike = Union[str, Path]


class Root:
    def __init__(self, root: PathLike = "/") -> None:
        self.root = Path(root)

    @property
    def is_real(self) -> bool:
        return str(self.root) == "/"

    def __call__(self, path: PathLike) -> Path:
        """The host path of the device path `path` (which must be absolute)."""
        text = str(path)
        if not text.startswith("/"):
            raise ValueError("device paths are absolute: " + text)
        return self.root / text.lstrip("/")


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write, fsync, rename, fsync the renamed file and the directory: after a power cut the
    file is old or new, never half.

    The fsync of the renamed file matters on FAT (the card's report.json): vfat's rename over
    an existing file moves the new inode into the old file's directory slot, and that slot is
    written with the inode (fat_write_inode), not with the directory. A directory fsync alone
    synced the FAT table, which already had the old file's clusters freed, while the slot on
    disk still pointed at them: after a power cut the kernel found a FAT entry beyond EOF and
    remounted the boot partition read-only (the QEMU power cut in `start` showed it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        write_all(fd, data)
    finally:
        os.close(fd)
    os.replace(str(tmp), str(path))
    fsync_path(path)
    fsync_dir(path.parent)


def fsync_path(path: Path) -> None:
    """fsync a file by name (its data, and on FAT its directory entry)."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` at the descriptor's position, then fsync it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def fsync_dir(directory: Path) -> None:
    fsync_path(directory)


def remove(path: Path) -> bool:
    """Delete `path` if present (and make it so on disk); True when something was removed."""
    try:
        os.unlink(str(path))
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True
