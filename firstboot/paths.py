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

    The fsync of the renamed file matters on FAT: vfat's rename over an existing file moves
    the new inode into the old file's directory slot, and that slot is written with the inode
    (fat_write_inode), not with the directory. A directory fsync alone synced the FAT table,
    which already had the old file's clusters freed, while the slot on disk still pointed at
    them (the QEMU power cut in `start` showed it). Even so a FAT rename is not safe from
    power cuts: files on the boot partition are written with `write_in_place`."""
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


def write_in_place(path: Path, data: bytes, fill: bytes = b" ") -> None:
    """Write `data` over the start of `path`, in the clusters it already has: the file is
    created or grown when `data` is longer, never shrunk (a shorter `data` is padded with
    `fill` to the file's size), and never renamed.

    This is how a file on the FAT boot partition is rewritten (the card's report.json). A FAT
    rename or truncate changes the directory entry and the allocation table in separate
    writes, and a power cut between them left an entry pointing at freed clusters; at the
    first touch of it the kernel remounted the partition read-only, and the agent could not
    take its secrets off it (the QEMU power cuts in verify, then start, met it twice). In
    place, a power cut can tear the data only: the new bytes up to some point, the old after."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        size = os.fstat(fd).st_size
        if len(data) < size:
            data += fill * (size - len(data))
        write_all(fd, data)
    finally:
        os.close(fd)


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
