"""Image: one Raspberry Pi disk image being customized, with its boot (FAT) and root (ext4).

Opening an image checks that it has the Pi layout (a partition table, a FAT
boot partition, an ext4 root partition that fits its partition). Steps stage
changes on `image.boot` and `image.root`; `commit()` makes room (growing the
image and the root partition when the root filesystem is too full) and flushes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from builder.disk.ext4 import Ext4Filesystem
from builder.disk.fat import FatFilesystem
from builder.disk.superblock import is_ext4
from builder.disk.table import Partition, PartitionTable, read_table, resized, write_table
from builder.util.console import human_size
from builder.util.errors import BuildError, UserError

log = logging.getLogger("pifleet.image")

_ALIGN = 4 * 1024 * 1024
_HEADROOM = 16 * 1024 * 1024  # free space left in the root filesystem after our files


class Image:
    def __init__(
        self, path: Path, table: PartitionTable, boot: Partition, root: Partition, epoch: int
    ):
        self.path = path
        self.table = table
        self.boot_partition = boot
        self.root_partition = root
        self.epoch = epoch
        self.boot = FatFilesystem(path, boot.start, epoch)
        self.root = Ext4Filesystem(path, root.start, epoch)

    @classmethod
    def open(cls, path: Path, epoch: int = 0) -> Image:
        """Open `path` as a Pi image or raise a one-line UserError saying why it is not one."""
        check_tool_path(path)
        table = read_table(path)
        boot = next((p for p in table.partitions if _has_fat(path, p)), None)
        if boot is None:
            raise UserError(f"{path}: not a Raspberry Pi image: no FAT boot partition")
        root = next(
            (p for p in table.partitions if p.number != boot.number and is_ext4(path, p.start)),
            None,
        )
        if root is None:
            raise UserError(f"{path}: not a Raspberry Pi image: no ext4 root partition")
        image = cls(path, table, boot, root, epoch)
        usage = image.root.usage()
        if usage.size > root.size:
            raise UserError(
                f"{path}: the root filesystem ({human_size(usage.size)}) is larger than its partition "
                f"({human_size(root.size)}): corrupt or truncated image"
            )
        return image

    def commit(self, min_image_size: int | None = None) -> None:
        """Make room for the staged root files, then write staged changes to both filesystems."""
        changed = self.root.pending()
        self._make_room(self.root.bytes_needed(changed), min_image_size)
        self.root.flush(changed)
        self.boot.flush()

    def _make_room(self, needed: int, min_image_size: int | None) -> None:
        usage = self.root.usage()
        shortfall = needed + _HEADROOM - usage.free if needed else 0
        # New block groups bring their own inode tables and bitmaps: grow by more than is missing.
        grow_by = _with_metadata(shortfall, usage.metadata_share)
        if min_image_size is not None:
            grow_by = max(grow_by, min_image_size - os.path.getsize(self.path))
        if grow_by <= 0:
            return
        if shortfall > 0:
            log.info(
                "root filesystem has %s free but needs %s (+%s headroom): growing it",
                human_size(usage.free),
                human_size(needed),
                human_size(_HEADROOM),
            )
        self.grow_root(grow_by)
        after = self.root.usage()
        still = needed + _HEADROOM - after.free if needed else 0
        if still > 0:  # the metadata took more than its share: once more, twice what is missing
            self.grow_root(_with_metadata(2 * still, after.metadata_share))
            after = self.root.usage()
        if needed and after.free < needed:
            raise BuildError(
                f"{self.path}: the root filesystem has {human_size(after.free)} free after "
                f"growing it, but its new files need {human_size(needed)}"
            )

    def grow_root(self, extra: int) -> None:
        """Grow the image, the root partition and its filesystem by at least `extra` bytes."""
        root = self.root_partition
        last_end = max(p.end for p in self.table.partitions)
        if root.end != last_end:
            raise UserError(
                f"{self.path}: the root filesystem is full and cannot grow: partition "
                f"{root.number} is not the last partition"
            )
        new_root = -(-(root.size + extra) // _ALIGN) * _ALIGN
        tail = 1024 * 1024 if self.table.scheme == "gpt" else 0  # room for the backup GPT
        old_size = os.path.getsize(self.path)
        new_size = max(root.start + new_root + tail, old_size)
        log.info(
            "growing partition %d from %s to %s (image %s -> %s)",
            root.number,
            human_size(root.size),
            human_size(new_root),
            human_size(old_size),
            human_size(new_size),
        )
        try:
            os.truncate(self.path, new_size)
        except OSError as exc:
            raise UserError(f"{self.path}: cannot grow the image: {exc.strerror}") from None
        self.table = resized(self.table, root.number, new_root)
        write_table(self.path, self.table)
        self.root_partition = self.table.partition(root.number)
        self.root.grow(new_root)


def _with_metadata(missing: int, share: float) -> int:
    """Bytes to grow by so that `missing` bytes come free, given the metadata's share."""
    return int(missing / (1.0 - share)) + 1 if missing > 0 else 0


def check_tool_path(path: Path, what: str = "") -> None:
    """Refuse a path e2fsprogs (`image?offset=`) or mtools (`image@@offset`) would misread."""
    text = str(path.absolute())
    for mark, tool in (("?", "e2fsprogs"), ("@@", "mtools")):
        if mark in text:
            raise UserError(
                f"{path}: {what}{tool} cannot open a path containing {mark!r}: rename or move it"
            )


def _has_fat(path: Path, part: Partition) -> bool:
    with open(path, "rb") as f:
        f.seek(part.start)
        sector = f.read(512)
    if len(sector) < 512 or sector[510:512] != b"\x55\xaa":
        return False
    return sector[54:59] == b"FAT12" or sector[54:59] == b"FAT16" or sector[82:87] == b"FAT32"
