"""The ext4 superblock, read straight from the image: size, free space, features, times."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.util.errors import BuildError

EXT4_MAGIC_OFFSET = 1024 + 56


@dataclass(frozen=True)
class Usage:
    block_size: int
    blocks: int
    free_blocks: int
    free_inodes: int
    features: frozenset[str]
    inodes: int = 0
    inode_size: int = 256
    blocks_per_group: int = 32768

    @property
    def metadata_share(self) -> float:
        """The share of the filesystem its block groups' own metadata takes (inode tables and
        bitmaps): growing the filesystem by N bytes frees about N * (1 - share)."""
        if not self.blocks:
            return 0.0
        groups = -(-self.blocks // max(self.blocks_per_group, 1))
        meta = self.inodes * self.inode_size + 2 * groups * self.block_size
        return min(meta / self.size, 0.5)

    @property
    def size(self) -> int:
        return self.blocks * self.block_size

    @property
    def free(self) -> int:
        return self.free_blocks * self.block_size


_FEATURES = {
    ("compat", 0x4): "has_journal",
    ("compat", 0x10): "resize_inode",
    ("incompat", 0x40): "extent",
    ("incompat", 0x80): "64bit",
    ("incompat", 0x200): "flex_bg",
    ("ro_compat", 0x400): "metadata_csum",
}


def read_superblock(image: Path, offset: int) -> Usage:
    """Block size, counts and feature names straight from the ext4 superblock."""
    with open(image, "rb") as f:
        f.seek(offset + 1024)
        sb = f.read(1024)
    if len(sb) < 1024 or sb[0x38:0x3A] != b"\x53\xef":
        raise BuildError(f"{image}: no ext4 superblock at byte {offset + 1024}")

    def u32(at: int) -> int:
        return int.from_bytes(sb[at : at + 4], "little")

    flags = {"compat": u32(0x5C), "incompat": u32(0x60), "ro_compat": u32(0x64)}
    wide = bool(flags["incompat"] & 0x80)
    blocks = u32(0x04) | ((u32(0x150) << 32) if wide else 0)
    free = u32(0x0C) | ((u32(0x158) << 32) if wide else 0)
    return Usage(
        block_size=1024 << u32(0x18),
        blocks=blocks,
        free_blocks=free,
        free_inodes=u32(0x10),
        features=frozenset(name for (kind, bit), name in _FEATURES.items() if flags[kind] & bit),
        inodes=u32(0x00),
        inode_size=int.from_bytes(sb[0x58:0x5A], "little") if u32(0x4C) >= 1 else 128,
        blocks_per_group=u32(0x20),
    )


def is_ext4(image: Path, offset: int) -> bool:
    with open(image, "rb") as f:
        f.seek(offset + EXT4_MAGIC_OFFSET)
        return f.read(2) == b"\x53\xef"


def last_write_time(image: Path, offset: int) -> int:
    """The superblock's last-write time (s_wtime and its high byte), in seconds since 1970."""
    with open(image, "rb") as f:
        f.seek(offset + 1024)
        sb = f.read(1024)
    low = int.from_bytes(sb[0x30:0x34], "little")
    high = sb[0x274] if len(sb) > 0x274 else 0
    return low | (high << 32)
