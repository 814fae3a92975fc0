"""FAT filesystem edits through mtools, straight on the image file (`image@@offset`).

No mounting and no carving: mtools addresses the partition inside the image.
Writes are staged and flushed in as few mtools calls as possible (one `mcopy`
per target directory), because per-device personalization writes a handful of
small files into hundreds of images. Timestamps come from SOURCE_DATE_EPOCH, so
the same content gives the same bytes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path, PurePosixPath

from builder.util.errors import BuildError, UserError
from builder.util.private import create_private, private_dir, write_private
from builder.util.run import PRIVATE_UMASK, run

log = logging.getLogger("pifleet.fat")


class FatFilesystem:
    """The FAT partition at `offset` in `image`; paths are absolute within the FAT ('/cmdline.txt')."""

    def __init__(self, image: Path, offset: int, epoch: int) -> None:
        self.image = image
        self.offset = offset
        self.epoch = epoch
        self._staged: dict[str, bytes | None] = {}  # path -> content, None = delete

    @property
    def _spec(self) -> str:
        if "@@" in str(self.image):  # mtools would split the name at the first @@
            raise UserError(f"{self.image}: mtools cannot open a path containing '@@'")
        return f"{self.image}@@{self.offset}"

    def _env(self) -> dict[str, str]:
        return {
            "MTOOLS_SKIP_CHECK": "1",
            "SOURCE_DATE_EPOCH": str(self.epoch),
            "MTOOLS_NO_VFAT": "0",
        }

    def _mtools(self, *argv: str, what: str, check: bool = True) -> bytes:
        proc = run([argv[0], "-i", self._spec, *argv[1:]], env=self._env(), what=what, check=check)
        return proc.stdout if proc.returncode == 0 else b""

    def read(self, path: str) -> bytes | None:
        """Content of `path` (staged content wins), or None when absent."""
        if path in self._staged:
            return self._staged[path]
        return self._read_disk(path)

    def _read_disk(self, path: str) -> bytes | None:
        proc = run(
            ["mcopy", "-n", "-i", self._spec, f"::{path}", "-"], env=self._env(), check=False
        )
        if proc.returncode != 0:
            return None
        return proc.stdout

    def listdir(self, path: str = "/") -> list[str]:
        """Names in directory `path` ([] when it does not exist)."""
        proc = run(["mdir", "-b", "-i", self._spec, f"::{path}"], env=self._env(), check=False)
        if proc.returncode != 0:
            return []
        names = []
        for line in proc.stdout.decode(errors="replace").splitlines():
            name = line.strip().rstrip("/")
            if name:
                names.append(PurePosixPath(name.removeprefix("::")).name)
        return sorted(names)

    def label(self) -> str:
        """The volume label from the boot sector ('bootfs', 'system-boot')."""
        with open(self.image, "rb") as f:
            f.seek(self.offset)
            sector = f.read(512)
        fat32 = sector[82:90].startswith(b"FAT32")
        raw = sector[71:82] if fat32 else sector[43:54]
        return raw.decode("ascii", errors="replace").strip()

    def stage(self, path: str, data: bytes) -> None:
        """Write `data` to `path` at the next `flush()`; parent directories are created."""
        self._staged[_plain(path)] = data

    def stage_delete(self, path: str) -> None:
        self._staged[_plain(path)] = None

    def flush(self) -> int:
        """Apply staged changes that differ from what is on disk; returns how many changed."""
        current = self._read_disk_many(sorted(self._staged))
        changes = {p: d for p, d in self._staged.items() if current.get(p) != d}
        self._staged.clear()
        if not changes:
            return 0
        deletes = sorted(p for p, d in changes.items() if d is None)
        if deletes:
            self._mtools(
                "mdel", *(f"::{p}" for p in deletes), what="deleting from the boot partition"
            )
        writes = {p: d for p, d in changes.items() if d is not None}
        self._write_many(writes)
        return len(changes)

    def _read_disk_many(self, paths: list[str]) -> dict[str, bytes]:
        """Contents of those `paths` that exist: one mcopy per directory, not one per file."""
        by_dir: dict[str, list[str]] = {}
        for path in paths:
            by_dir.setdefault(str(PurePosixPath(path).parent), []).append(path)
        found: dict[str, bytes] = {}
        with private_dir("fat") as tmp:
            for i, (_directory, members) in enumerate(sorted(by_dir.items())):
                dest = tmp / str(i)
                dest.mkdir(mode=0o700)
                # Copies of seed files hold secrets (the PSK, a host key): each is made here,
                # 0600 from its first byte, and mcopy only truncates and fills it (it keeps
                # an existing file's mode); its umask covers any file it would still create.
                for path in members:
                    with contextlib.suppress(FileExistsError):  # names differing in case only
                        os.close(create_private(dest / PurePosixPath(path).name))
                # Missing files make mcopy exit non-zero but the others are still copied.
                run(
                    ["mcopy", "-n", "-i", self._spec, *(f"::{p}" for p in members), f"{dest}/"],
                    env=self._env(),
                    check=False,
                    umask=PRIVATE_UMASK,
                )
                for path in members:
                    data = (dest / PurePosixPath(path).name).read_bytes()
                    # An empty copy is an empty file or a missing one: asked separately.
                    content = data if data else self._read_disk(path)
                    if content is not None:
                        found[path] = content
        return found

    def _write_many(self, files: dict[str, bytes]) -> None:
        by_dir: dict[str, dict[str, bytes]] = {}
        for path, data in sorted(files.items()):
            p = PurePosixPath(path)
            by_dir.setdefault(str(p.parent), {})[p.name] = data
        with private_dir("fat") as tmp:
            for directory, entries in by_dir.items():
                self._mkdirs(directory)
                stage_dir = tmp / f"d{len(list(tmp.iterdir()))}"
                stage_dir.mkdir(mode=0o700)
                sources = []
                for name, data in entries.items():
                    src = stage_dir / name
                    write_private(src, data)
                    sources.append(str(src))
                target = "::" + (directory.rstrip("/") + "/" if directory != "/" else "/")
                try:
                    self._mtools(
                        "mcopy",
                        "-o",
                        "-D",
                        "o",
                        *sources,
                        target,
                        what="writing to the boot partition",
                    )
                except BuildError as exc:
                    if "Disk full" in str(exc) or "No free" in str(exc):
                        raise UserError(f"{self.image}: the boot partition is full") from None
                    raise
        log.debug("boot partition: wrote %s", ", ".join(sorted(files)))

    def _mkdirs(self, directory: str) -> None:
        parts = PurePosixPath(directory).parts[1:]
        current = ""
        for part in parts:
            parent = current or "/"
            current = f"{current}/{part}"
            if part.lower() not in (n.lower() for n in self.listdir(parent)):
                self._mtools(
                    "mmd", f"::{current}", what=f"creating {current} on the boot partition"
                )


def _plain(path: str) -> str:
    """`path`, refused when mtools would expand it (wildcards) or it holds a control character."""
    if any(c in path for c in "*?[]") or any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise UserError(f"{path!r}: not a plain name for the boot partition")
    return path
