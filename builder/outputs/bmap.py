"""Block maps (bmap format 2.0, as bmaptool reads them): which blocks of an image hold data.

`scan` reads an image's data once and computes, in the same pass, the sha256
of the whole image (holes hashed as zeros, never read) and of every mapped
range, the two on separate cores. `render` turns that into a .bmap file and
`parse` reads one back (for `pifleet flash`).
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

from builder.disk.sparse import Advance, data_ranges
from builder.util.console import human_size
from builder.util.errors import BuildError, UserError

BLOCK = 4096
_CHUNK = 4 * 1024 * 1024
_ZEROS = bytes(_CHUNK)
_IN_FLIGHT = 4  # chunks the whole-image digest may lag behind: 16 MiB


@dataclass(frozen=True)
class Range:
    first: int  # block numbers, inclusive
    last: int
    sha256: str


@dataclass(frozen=True)
class BlockMap:
    size: int
    sha256: str  # of the whole image
    ranges: tuple[Range, ...]

    @property
    def blocks(self) -> int:
        return -(-self.size // BLOCK)

    @property
    def mapped_blocks(self) -> int:
        return sum(r.last - r.first + 1 for r in self.ranges)


def mapped_spans(fd: int, size: int) -> list[tuple[int, int]]:
    """Block-aligned (first, last) block spans covering every data extent, merged."""
    spans: list[tuple[int, int]] = []
    for off, length in data_ranges(fd, 0, size):
        first, last = off // BLOCK, (off + length - 1) // BLOCK
        if spans and first <= spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], max(spans[-1][1], last))
        else:
            spans.append((first, last))
    return spans


def scan(path: Path, advance: Advance | None = None) -> BlockMap:
    with open(path, "rb") as f, ThreadPoolExecutor(max_workers=1) as other_core:
        whole = _Behind(other_core)
        fd = f.fileno()
        size = os.fstat(fd).st_size
        ranges = []
        pos = 0
        for first, last in mapped_spans(fd, size):
            start, end = first * BLOCK, min((last + 1) * BLOCK, size)
            whole.zeros(start - pos)
            ranges.append(Range(first, last, _hash_range(path, fd, start, end, whole, advance)))
            pos = end
        whole.zeros(size - pos)
        digest = whole.hexdigest()
    return BlockMap(size, digest, tuple(ranges))


def _hash_range(
    path: Path, fd: int, start: int, end: int, whole: _Behind, advance: Advance | None
) -> str:
    """sha256 of [start, end) of `fd`, which also goes to `whole`."""
    part = hashlib.sha256()
    while start < end:
        chunk = os.pread(fd, min(_CHUNK, end - start), start)
        if not chunk:
            raise BuildError(f"{path}: unexpected end of file at byte {start}")
        whole.update(chunk)
        part.update(chunk)
        start += len(chunk)
        if advance is not None:
            advance(len(chunk))
    return part.hexdigest()


class _Behind:
    """The whole image's sha256, fed in order on another core (hashlib releases the GIL).

    The image is hashed as one sequence, holes as zeros, so that is the longest job: it
    runs behind the caller, who reads the data and hashes the ranges meanwhile, at most
    a few chunks ahead (bounded memory).
    """

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool
        self._digest = hashlib.sha256()
        self._pending: deque[Future[None]] = deque()

    def update(self, chunk: bytes) -> None:
        self._queue(self._digest.update, chunk)

    def zeros(self, count: int) -> None:
        if count > 0:
            self._queue(_zeros, self._digest, count)

    def hexdigest(self) -> str:
        while self._pending:
            self._pending.popleft().result()
        return self._digest.hexdigest()

    def _queue(self, fn: Callable[..., None], *args: object) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > _IN_FLIGHT:
            self._pending.popleft().result()


def _zeros(digest: hashlib._Hash, count: int) -> None:
    while count > 0:
        step = min(count, _CHUNK)
        digest.update(_ZEROS if step == _CHUNK else _ZEROS[:step])
        count -= step


def render(result: BlockMap) -> bytes:
    """The .bmap file (version 2.0) for `result`, with its own checksum filled in."""
    mapped = result.mapped_blocks * BLOCK
    percent = 100.0 * result.mapped_blocks / max(result.blocks, 1)
    lines = [
        '<?xml version="1.0" ?>',
        "<!-- Block map of an image: the blocks that hold data and must be written.",
        "     Written by pifleet; read by bmaptool and `pifleet flash`. -->",
        '<bmap version="2.0">',
        f"    <!-- Image size in bytes: {human_size(result.size)} -->",
        f"    <ImageSize> {result.size} </ImageSize>",
        "    <!-- Size of a block in bytes -->",
        f"    <BlockSize> {BLOCK} </BlockSize>",
        "    <!-- Count of blocks in the image file -->",
        f"    <BlocksCount> {result.blocks} </BlocksCount>",
        f"    <!-- Count of mapped blocks: {human_size(mapped)} or {percent:.1f}% -->",
        f"    <MappedBlocksCount> {result.mapped_blocks} </MappedBlocksCount>",
        "    <!-- Type of checksum used in this file -->",
        "    <ChecksumType> sha256 </ChecksumType>",
        "    <!-- The checksum of this bmap file, computed with this field all '0'. -->",
        f"    <BmapFileChecksum> {'0' * 64} </BmapFileChecksum>",
        "    <BlockMap>",
    ]
    for r in result.ranges:
        span = f"{r.first}-{r.last}" if r.last != r.first else f"{r.first}"
        lines.append(f'        <Range chksum="{r.sha256}"> {span} </Range>')
    lines += ["    </BlockMap>", "</bmap>", ""]
    text = "\n".join(lines)
    checksum = hashlib.sha256(text.encode()).hexdigest()
    return text.replace("0" * 64, checksum, 1).encode()


def parse(data: bytes, where: str) -> BlockMap:
    """A .bmap file back into a BlockMap (whole-image sha256 unknown: ''), its checksum verified."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise UserError(f"{where}: not a bmap file: {exc}") from None
    if root.tag != "bmap" or not root.get("version", "").startswith("2."):
        raise UserError(f"{where}: unsupported bmap version {root.get('version')!r} (need 2.x)")

    def text(tag: str) -> str:
        node = root.find(tag)
        if node is None or node.text is None:
            raise UserError(f"{where}: bmap has no <{tag}>")
        return node.text.strip()

    stated = text("BmapFileChecksum")
    if hashlib.sha256(data.replace(stated.encode(), b"0" * 64, 1)).hexdigest() != stated:
        raise UserError(f"{where}: the bmap file's own checksum does not match (corrupt file?)")
    if text("ChecksumType") != "sha256" or int(text("BlockSize")) != BLOCK:
        raise UserError(f"{where}: only sha256 bmaps with {BLOCK}-byte blocks are supported")
    ranges = []
    for node in root.iter("Range"):
        first, _, last = (node.text or "").strip().partition("-")
        ranges.append(Range(int(first), int(last or first), node.get("chksum", "")))
    return BlockMap(int(text("ImageSize")), "", tuple(ranges))
