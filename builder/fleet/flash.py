"""`pifleet flash IMAGE /dev/sdX`: write an image to an SD card, safely, with its .bmap.

Refused: anything that is not a whole removable/USB/MMC disk, a card with no
medium, anything with a partition mounted (directly or through device-mapper
or RAID), the disk holding `/`, and the image (or its .bmap) itself. pifleet
unmounts nothing. The card's model, size and serial are shown and the user
must confirm (or pass --yes); so must a regular file that already holds data.
Only the mapped ranges are written, each checked against the .bmap as it is
read from the image; they are then read back from the card (page cache
dropped first) and checked again; then the card is personalized.

What a target is lives in `builder.fleet.target`; the two kinds, a file and a disk, and
their refusal rules in `builder.fleet.destination`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from builder.disk.sparse import Advance
from builder.disk.table import read_table
from builder.fleet.destination import Destination
from builder.fleet.target import describe
from builder.outputs import bmap
from builder.util.atomic import reported_as
from builder.util.console import human_size, progress
from builder.util.errors import BuildError, UserError

if TYPE_CHECKING:
    from builder.config.model import Device, FleetConfig
_CHUNK = 4 * 1024 * 1024


def _span(r: bmap.Range, size: int) -> tuple[int, int]:
    return r.first * bmap.BLOCK, min((r.last + 1) * bmap.BLOCK, size)


def write(
    image: Path,
    destination: Destination,
    where: Path,
    block_map: bmap.BlockMap,
    advance: Advance | None = None,
) -> int:
    """Write `block_map`'s mapped ranges of `image` to `where`, the place `destination.prepared`
    gave (messages name `destination.path`); bytes written.

    Each range is hashed as it is read from the image and checked against the
    block map, so an image changed after its .bmap was made is caught here, not
    blamed on the card.
    """
    name = destination.path
    written = 0
    fd = destination.open_for_writing(where, block_map.size)
    try:
        with open(image, "rb") as src:
            for r in block_map.ranges:
                count, digest = _write_range(src, fd, name, r, block_map.size, advance)
                written += count
                if r.sha256 and digest != r.sha256:
                    raise BuildError(
                        f"{image}: blocks {r.first}-{r.last} differ from its bmap (image changed "
                        f"after the bmap was made?); flashing {name} stopped"
                    )
        try:
            os.fsync(fd)
        except OSError as exc:
            raise BuildError(f"{name}: flushing the writes failed: {exc.strerror}") from None
    finally:
        os.close(fd)
    return written


def _write_range(
    src: BinaryIO, fd: int, target: Path, r: bmap.Range, size: int, advance: Advance | None
) -> tuple[int, str]:
    """Copy one range from the image to the target; (bytes written, sha256 of what was read)."""
    start, end = _span(r, size)
    digest = hashlib.sha256()
    written = 0
    while start < end:
        chunk = os.pread(src.fileno(), min(_CHUNK, end - start), start)
        if not chunk:
            raise BuildError(f"{src.name}: ended early at byte {start} (changed while flashing?)")
        digest.update(chunk)
        view = memoryview(chunk)
        while view:  # a short write is continued, never skipped
            try:
                done = os.pwrite(fd, view, start)
            except OSError as exc:
                raise BuildError(
                    f"{target}: write failed at byte {start}: {exc.strerror} (card removed or failing?)"
                ) from None
            view, start, written = view[done:], start + done, written + done
        if advance is not None:
            advance(len(chunk))
    return written, digest.hexdigest()


def verify(target: Path, block_map: bmap.BlockMap, shown: Path | None = None) -> None:
    """Read the mapped ranges back from the card itself (cache dropped) and check them."""
    name = shown or target
    fd = os.open(target, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        for r in block_map.ranges:
            start, end = _span(r, block_map.size)
            digest = hashlib.sha256()
            while start < end:
                try:
                    chunk = os.pread(fd, min(_CHUNK, end - start), start)
                except OSError as exc:
                    raise BuildError(
                        f"{name}: read back failed at byte {start}: {exc.strerror}"
                    ) from None
                if not chunk:
                    raise BuildError(f"{name}: read back ended early at byte {start}")
                digest.update(chunk)
                start += len(chunk)
            if r.sha256 and digest.hexdigest() != r.sha256:
                raise BuildError(
                    f"{name}: blocks {r.first}-{r.last} read back differently: bad card?"
                )
    finally:
        os.close(fd)


def confirm(
    target: Destination, image: Path, block_map: bmap.BlockMap, ask: Callable[[str], str] = input
) -> None:
    if not sys.stdin.isatty():
        raise UserError(f"{target.path}: not asking on a non-terminal; pass --yes to confirm")
    mapped = human_size(block_map.mapped_blocks * bmap.BLOCK)
    answer = ask(f"Write {image.name} ({mapped} of data) to {target.summary()}?\n"
                 f"Everything on {target.path} will be lost. Type 'yes' to continue: ")  # fmt: skip
    if answer.strip().lower() != "yes":
        raise UserError(f"{target.path}: not confirmed; nothing was written")


def bmap_path(image: Path, bmap_file: Path | None) -> Path:
    return bmap_file or image.with_name(image.name + ".bmap")


def block_map_of(image: Path, bmap_file: Path | None) -> bmap.BlockMap:
    """The ranges to write: from the .bmap next to the image when there is one, else scanned."""
    candidate = bmap_path(image, bmap_file)
    if candidate.exists():
        block_map = bmap.parse(candidate.read_bytes(), str(candidate))
        if block_map.size != image.stat().st_size:
            raise UserError(
                f"{candidate}: made for a {block_map.size}-byte image, but {image} has {image.stat().st_size}"
            )
        return block_map
    if bmap_file is not None:
        raise UserError(f"{bmap_file}: no such bmap file")
    with progress("scanning image", image.stat().st_size) as bar:
        return bmap.scan(image, bar.advance)


def flash(
    image: Path,
    target_path: Path,
    bmap_file: Path | None,
    yes: bool,
    dry_run: bool,
    then: Callable[[Path], None] | None = None,
    protected: Mapping[str, Path] | None = None,
    started: Callable[[Destination, int], None] | None = None,
) -> Destination:
    """Write and verify `image` on the target, then run `then` on it (personalization).

    A regular-file target is written under a temporary name and appears only
    when all of it succeeded; a card is written in place. `started` hears of the target
    and the bytes to write once the user agreed, before the first write."""
    if not image.is_file():
        raise UserError(f"{image}: no such image file")
    read_table(image)  # a disk image, not any file: refused before the card is touched
    target = describe(target_path)
    own = {"image": image, "bmap": bmap_path(image, bmap_file)}
    target.refuse_inputs(own, protected or {})
    block_map = block_map_of(image, bmap_file)
    reason = target.refusal(block_map.size)
    if reason:
        raise UserError(reason)
    mapped = block_map.mapped_blocks * bmap.BLOCK
    print(
        f"{image.name}: {human_size(block_map.size)}, {human_size(mapped)} mapped in {len(block_map.ranges)} ranges"
    )
    print(f"target:  {target.summary()}")
    if dry_run:
        print(
            f"dry run: would write {human_size(mapped)} to {target.path} and verify it; nothing written"
        )
        return target
    if target.needs_consent and not yes:
        confirm(target, image, block_map)
    if started is not None:
        started(target, mapped)
    with target.prepared() as dest:
        with progress(f"writing {target.path}", mapped) as bar:
            written = write(image, target, dest, block_map, bar.advance)
        with progress("verifying", mapped):
            verify(dest, block_map, target.path)
        print(
            f"wrote and verified {human_size(written)} ({written / max(mapped, 1):.3f}x the mapped data)"
        )
        if then is not None:
            with reported_as(dest, target.path):  # the user's file, not pifleet's temporary one
                then(dest)
    return target


def personalize_card(
    config: FleetConfig,
    device: Device,
    written: Path,
    golden_sha256: str,
    known_hosts: AbstractContextManager[object] | None = None,
) -> int:
    """Personalize the card (or file) just written as `device`; the files changed. Cards
    of different devices may be personalized at once: `known_hosts` (a lock) is held only
    while the fleet's known_hosts file, which they share, is rewritten."""
    from builder.fleet.personalize import apply, open_golden, record_known_hosts, secrets_for

    secrets = secrets_for(config, device)
    changed = apply(open_golden(written), config, device, secrets, golden_sha256)
    with known_hosts or contextlib.nullcontext():
        record_known_hosts(config, [device])
    return changed
