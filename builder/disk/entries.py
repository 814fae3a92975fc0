"""What the build writes into the root filesystem (files, symlinks, directories), and
what debugfs says is there (`Inode`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class File:
    path: str
    mode: int  # permission bits, e.g. 0o644
    data: bytes | None = None
    source: Path | None = None  # large files are written straight from the host file
    uid: int = 0
    gid: int = 0

    def size(self) -> int:
        return len(self.data) if self.data is not None else (self.source or Path()).stat().st_size

    def digest(self) -> str:
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        h = hashlib.sha256()
        with open(self.source or "", "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Directory:
    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


Entry = File | Symlink | Directory


@dataclass(frozen=True)
class Inode:
    kind: str  # "regular", "directory", "symlink", ...
    mode: int
    uid: int
    gid: int
    size: int
    link_target: str | None
