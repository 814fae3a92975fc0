"""MBR and GPT partition tables, read and written in Python (no sfdisk, no root).

Only what a Raspberry Pi image needs: primary MBR partitions (Raspberry Pi OS,
Ubuntu for Pi) and GPT (Pi 5 NVMe images). Offsets are always read from the
table, never assumed.
"""

from __future__ import annotations

import os
import struct
import uuid
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Literal

from builder.util.errors import UserError

SECTOR = 512
_MBR_SIGNATURE = b"\x55\xaa"
_GPT_SIGNATURE = b"EFI PART"
_GPT_PROTECTIVE = 0xEE
_EXTENDED_TYPES = {0x05, 0x0F, 0x85}
_GPT_ENTRY = struct.Struct("<16s16sQQQ72s")
_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")

# Partition type codes: MBR byte -> GPT GUID for the two kinds a Pi image holds.
MBR_FAT32_LBA = 0x0C
MBR_LINUX = 0x83
GPT_ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
GPT_LINUX_DATA = "0fc63daf-8483-4772-8e79-3d69d8477de4"
GPT_MSDATA = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"


@dataclass(frozen=True)
class Partition:
    """One partition. `start` and `size` are in bytes; `uuid` is the PARTUUID Linux sees."""

    number: int
    start: int
    size: int
    type: str  # MBR: "0x0c"; GPT: the type GUID
    uuid: str  # MBR: "<disk-id>-<nn>"; GPT: the unique partition GUID
    name: str = ""
    bootable: bool = False
    attributes: int = 0  # GPT attribute bits, kept as read

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def is_fat(self) -> bool:
        return self.type in ("0x0b", "0x0c", "0x0e", "0x06", GPT_ESP, GPT_MSDATA)


@dataclass(frozen=True)
class PartitionTable:
    scheme: Literal["mbr", "gpt"]
    disk_id: str  # MBR: 8 hex digits; GPT: disk GUID
    partitions: tuple[Partition, ...]

    def partition(self, number: int) -> Partition:
        for part in self.partitions:
            if part.number == number:
                return part
        raise UserError(f"the image has no partition {number}")


def read_table(path: Path) -> PartitionTable:
    """The partition table of an image file or block device, or a UserError naming the file."""
    try:
        with open(path, "rb") as f:
            size = _size_of(f)
            head = f.read(SECTOR * 2)
            if len(head) < SECTOR * 2 or head[510:512] != _MBR_SIGNATURE:
                raise UserError(f"{path}: not a disk image (no partition table found)")
            entries = _mbr_entries(head[:SECTOR])
            if entries and entries[0][1] == _GPT_PROTECTIVE:
                return _read_gpt(f, path, head[SECTOR:], size)
            return _read_mbr(head[:SECTOR], entries, path, size)
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None


def _size_of(f: BinaryIO) -> int:
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    return size


def _mbr_entries(sector: bytes) -> list[tuple[int, int, int, int, int]]:
    """(slot, type, status, first LBA, sector count) of every non-empty primary entry."""
    found = []
    for slot in range(4):
        raw = sector[446 + 16 * slot : 462 + 16 * slot]
        status, ptype = raw[0], raw[4]
        first, count = struct.unpack_from("<II", raw, 8)
        if ptype != 0 and count != 0:
            found.append((slot, ptype, status, first, count))
    return found


def _read_mbr(
    sector: bytes, entries: list[tuple[int, int, int, int, int]], path: Path, size: int
) -> PartitionTable:
    disk_id = f"{struct.unpack_from('<I', sector, 440)[0]:08x}"
    parts = []
    for slot, ptype, status, first, count in entries:
        if ptype in _EXTENDED_TYPES:
            raise UserError(f"{path}: extended MBR partitions are not supported")
        part = Partition(
            number=slot + 1,
            start=first * SECTOR,
            size=count * SECTOR,
            type=f"0x{ptype:02x}",
            uuid=f"{disk_id}-{slot + 1:02d}",
            bootable=status == 0x80,
        )
        _check_inside(part, path, size)
        parts.append(part)
    if not parts:
        raise UserError(f"{path}: the partition table is empty")
    return PartitionTable("mbr", disk_id, tuple(parts))


def _check_inside(part: Partition, path: Path, size: int) -> None:
    if part.end > size:
        raise UserError(
            f"{path}: partition {part.number} ends at byte {part.end} but the image has only "
            f"{size} bytes (truncated download?)"
        )


def _read_gpt(f: BinaryIO, path: Path, header: bytes, size: int) -> PartitionTable:
    fields = _GPT_HEADER.unpack_from(header)
    sig, _rev, hsize, hcrc, _r, _cur, _backup, _first, _last, guid, entries_lba, n, esize, ecrc = (
        fields
    )
    if sig != _GPT_SIGNATURE:
        raise UserError(f"{path}: protective MBR but no GPT header")
    check = bytearray(header[:hsize])
    check[16:20] = b"\0\0\0\0"
    if zlib.crc32(check) != hcrc:
        raise UserError(f"{path}: GPT header checksum is wrong (corrupt image?)")
    f.seek(entries_lba * SECTOR)
    table = f.read(n * esize)
    if zlib.crc32(table) != ecrc:
        raise UserError(f"{path}: GPT partition entries checksum is wrong (corrupt image?)")
    parts = []
    for i in range(n):
        tguid, uguid, first, last, attrs, name = _GPT_ENTRY.unpack_from(table, i * esize)
        if tguid == bytes(16):
            continue
        part = Partition(
            number=i + 1,
            start=first * SECTOR,
            size=(last - first + 1) * SECTOR,
            type=str(uuid.UUID(bytes_le=tguid)),
            uuid=str(uuid.UUID(bytes_le=uguid)),
            name=name.decode("utf-16-le").rstrip("\0"),
            bootable=bool(attrs & 0x4),
            attributes=attrs,
        )
        _check_inside(part, path, size)
        parts.append(part)
    if not parts:
        raise UserError(f"{path}: the partition table is empty")
    return PartitionTable("gpt", str(uuid.UUID(bytes_le=guid)), tuple(parts))


def write_table(path: Path, table: PartitionTable) -> None:
    """Write `table` into the first sectors (and, for GPT, the last sectors) of `path`."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if table.scheme == "mbr":
            _write_mbr(f, table)
        else:
            _write_gpt(f, table, size)


def _chs(lba: int) -> bytes:
    """CHS address with the 255-head, 63-sector geometry every tool assumes; capped."""
    cyl, rem = divmod(lba, 255 * 63)
    if cyl > 1023:
        return b"\xfe\xff\xff"
    head, sector = divmod(rem, 63)
    return bytes([head, ((cyl >> 2) & 0xC0) | (sector + 1), cyl & 0xFF])


def _mbr_entry(part: Partition | None, ptype: int | None = None) -> bytes:
    if part is None:
        return bytes(16)
    first, count = part.start // SECTOR, part.size // SECTOR
    kind = ptype if ptype is not None else int(part.type, 16)
    return (
        bytes([0x80 if part.bootable else 0])
        + _chs(first)
        + bytes([kind])
        + _chs(first + count - 1)
        + struct.pack("<II", first, count)
    )


def _write_mbr(f: BinaryIO, table: PartitionTable) -> None:
    f.seek(0)
    sector = bytearray(f.read(SECTOR).ljust(SECTOR, b"\0"))
    struct.pack_into("<I", sector, 440, int(table.disk_id, 16))
    sector[444:446] = b"\0\0"
    by_number = {p.number: p for p in table.partitions}
    if any(n not in range(1, 5) for n in by_number):
        raise UserError("an MBR holds partitions 1 to 4 only")
    for slot in range(4):
        sector[446 + 16 * slot : 462 + 16 * slot] = _mbr_entry(by_number.get(slot + 1))
    sector[510:512] = _MBR_SIGNATURE
    f.seek(0)
    f.write(sector)


def _write_gpt(f: BinaryIO, table: PartitionTable, size: int) -> None:
    last_lba = size // SECTOR - 1
    n_entries, esize = 128, 128
    entry_sectors = n_entries * esize // SECTOR
    entries = bytearray(n_entries * esize)
    for part in table.partitions:
        name = part.name.encode("utf-16-le")[:72].ljust(72, b"\0")
        _GPT_ENTRY.pack_into(
            entries,
            (part.number - 1) * esize,
            uuid.UUID(part.type).bytes_le,
            uuid.UUID(part.uuid).bytes_le,
            part.start // SECTOR,
            part.end // SECTOR - 1,
            part.attributes | (0x4 if part.bootable else 0),
            name,
        )
    ecrc = zlib.crc32(entries)
    first_usable = 2 + entry_sectors
    last_usable = last_lba - entry_sectors - 1
    disk_guid = uuid.UUID(table.disk_id).bytes_le

    def header(current: int, backup: int, entries_lba: int) -> bytes:
        fields = [_GPT_SIGNATURE, 0x00010000, 92, 0, 0, current, backup, first_usable]
        fields += [last_usable, disk_guid, entries_lba, n_entries, esize, ecrc]
        raw = bytearray(_GPT_HEADER.pack(*fields))
        struct.pack_into("<I", raw, 16, zlib.crc32(raw))
        return bytes(raw).ljust(SECTOR, b"\0")

    protective = Partition(1, SECTOR, min(size - SECTOR, 0xFFFFFFFF * SECTOR), "0xee", "")
    f.seek(0)
    sector = bytearray(f.read(SECTOR).ljust(SECTOR, b"\0"))
    sector[440:446] = bytes(6)
    sector[446:510] = _mbr_entry(protective, _GPT_PROTECTIVE) + bytes(48)
    sector[510:512] = _MBR_SIGNATURE
    f.seek(0)
    f.write(sector)
    f.write(header(1, last_lba, 2))
    f.write(entries)
    f.seek((last_lba - entry_sectors) * SECTOR)
    f.write(entries)
    f.write(header(last_lba, 1, last_lba - entry_sectors))


def resized(table: PartitionTable, number: int, new_size: int) -> PartitionTable:
    """`table` with partition `number` grown (or shrunk) to `new_size` bytes."""
    parts = tuple(replace(p, size=new_size) if p.number == number else p for p in table.partitions)
    return replace(table, partitions=parts)
