"""`pifleet flash IMAGE /dev/sdX`: write an image to an SD card, safely, with its .bmap.

Refused: anything that is not a whole removable/USB/MMC disk, a card with no
medium, anything with a partition mounted (directly or through device-mapper
or RAID), the disk holding `/`, and the image (or its .bmap) itself. pifleet
unmounts nothing. The card's model, size and serial are shown and the user
must confirm (or pass --yes); so must a regular file that already holds data.
Only the mapped ranges are written, each checked against the .bmap as it is
read from the image; they are then read back from the card (page cache
dropped first) and checked again; then the card is personalized.

What a target is and the refusal rules live in `builder.fleet.target`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import hashlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from builder.disk.sparse import Advance
from builder.disk.table import read_table
from builder.fleet.target import Target, describe, refusal
from builder.outputs import bmap
from builder.outputs.artifacts import manifest_inputs
from builder.util.atomic import replace_when_done, reported_as
from builder.util.batch import recover, refuse_overwriting, same_file
from builder.util.console import human_size, progress
from builder.util.errors import BuildError, UserError

if TYPE_CHECKING:
    from builder.config.model import Device, FleetConfig
_CHUNK = 4 * 1024 * 1024


def _span(r: bmap.Range, size: int) -> tuple[int, int]:
    return r.first * bmap.BLOCK, min((r.last + 1) * bmap.BLOCK, size)


def _open_target(target: Path, size: int, name: Path) -> int:
    """A write descriptor on the card (exclusive: the kernel refuses a mounted one), or on a
    fresh regular file of the image's size whose unmapped ranges are holes, not old data."""
    try:
        if target.is_block_device():
            return os.open(target, os.O_WRONLY | os.O_EXCL)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.ftruncate(fd, size)
        return fd
    except PermissionError:
        raise UserError(
            f"{name}: permission denied (writing a card needs sudo or the disk group)"
        ) from None
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise UserError(f"{name}: busy: mounted or in use by another program") from None
        raise BuildError(f"{name}: cannot open for writing: {exc.strerror}") from None


def write(
    image: Path,
    target: Path,
    plan: bmap.Scan,
    advance: Advance | None = None,
    shown: Path | None = None,
) -> int:
    """Write `plan`'s mapped ranges of `image` to `target` (called `shown` in messages, when it
    is a temporary stand-in); bytes written.

    Each range is hashed as it is read from the image and checked against the
    plan, so an image changed after its .bmap was made is caught here, not
    blamed on the card.
    """
    name = shown or target
    written = 0
    fd = _open_target(target, plan.size, name)
    try:
        with open(image, "rb") as src:
            for r in plan.ranges:
                count, digest = _write_range(src, fd, name, r, plan.size, advance)
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


def verify(target: Path, plan: bmap.Scan, shown: Path | None = None) -> None:
    """Read the mapped ranges back from the card itself (cache dropped) and check them."""
    name = shown or target
    fd = os.open(target, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        for r in plan.ranges:
            start, end = _span(r, plan.size)
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
    target: Target, image: Path, plan: bmap.Scan, ask: Callable[[str], str] = input
) -> None:
    if not sys.stdin.isatty():
        raise UserError(f"{target.path}: not asking on a non-terminal; pass --yes to confirm")
    mapped = human_size(plan.mapped_blocks * bmap.BLOCK)
    answer = ask(f"Write {image.name} ({mapped} of data) to {target.summary()}?\n"
                 f"Everything on {target.path} will be lost. Type 'yes' to continue: ")  # fmt: skip
    if answer.strip().lower() != "yes":
        raise UserError(f"{target.path}: not confirmed; nothing was written")


def bmap_path(image: Path, bmap_file: Path | None) -> Path:
    return bmap_file or image.with_name(image.name + ".bmap")


def image_plan(image: Path, bmap_file: Path | None) -> bmap.Scan:
    """The ranges to write: from the .bmap next to the image when there is one, else scanned."""
    candidate = bmap_path(image, bmap_file)
    if candidate.exists():
        plan = bmap.parse(candidate.read_bytes(), str(candidate))
        if plan.size != image.stat().st_size:
            raise UserError(
                f"{candidate}: made for a {plan.size}-byte image, but {image} has {image.stat().st_size}"
            )
        return plan
    if bmap_file is not None:
        raise UserError(f"{bmap_file}: no such bmap file")
    with progress("scanning image", image.stat().st_size) as bar:
        return bmap.scan(image, bar.advance)


def _refuse_own_inputs(
    target: Target, image: Path, bmap_file: Path | None, protected: Mapping[str, Path]
) -> None:
    """A regular-file target must not be the image, its bmap or another input of the run
    (the fleet file, the base, a token file): the same path, a symlink or a hard link."""
    if target.block:
        return
    for own in (image, bmap_path(image, bmap_file)):
        if same_file(target.path, own):
            raise UserError(
                f"{target.path}: is the {'image' if own == image else 'bmap'} being flashed itself"
            )
    if target.path.name.endswith(".bmap"):
        raise UserError(f"{target.path}: a block map's name; an image is never written as a .bmap")
    refuse_overwriting(target.path, protected)


def flash(
    image: Path,
    target_path: Path,
    bmap_file: Path | None,
    yes: bool,
    dry_run: bool,
    then: Callable[[Path], None] | None = None,
    protected: Mapping[str, Path] | None = None,
) -> Target:
    """Write and verify `image` on the target, then run `then` on it (personalization).

    A regular-file target is written under a temporary name and appears only
    when all of it succeeded; a card is written in place."""
    if not image.is_file():
        raise UserError(f"{image}: no such image file")
    read_table(image)  # a disk image, not any file: refused before the card is touched
    target = describe(target_path)
    _refuse_own_inputs(target, image, bmap_file, protected or {})
    plan = image_plan(image, bmap_file)
    reason = refusal(target, plan.size)
    if reason:
        raise UserError(reason)
    mapped = plan.mapped_blocks * bmap.BLOCK
    print(
        f"{image.name}: {human_size(plan.size)}, {human_size(mapped)} mapped in {len(plan.ranges)} ranges"
    )
    print(f"target:  {target.summary()}")
    if dry_run:
        print(
            f"dry run: would write {human_size(mapped)} to {target.path} and verify it; nothing written"
        )
        return target
    if (target.block or target.size > 0) and not yes:
        confirm(target, image, plan)
    with _destination(target) as dest:
        with progress(f"writing {target.path}", mapped) as bar:
            written = write(image, dest, plan, bar.advance, target.path)
        with progress("verifying", mapped):
            verify(dest, plan, target.path)
        print(
            f"wrote and verified {human_size(written)} ({written / max(mapped, 1):.3f}x the mapped data)"
        )
        if then is not None:
            with reported_as(dest, target.path):  # the user's file, not pifleet's temporary one
                then(dest)
    return target


@contextlib.contextmanager
def _destination(target: Target) -> Iterator[Path]:
    """Where to write: the card itself, or a temporary file renamed onto the target file
    (0600: the image holds the join token) once complete."""
    if target.block:
        yield target.path
        return
    with replace_when_done(target.path, 0o600) as tmp:
        yield tmp


def command(args: argparse.Namespace) -> int:
    if bool(args.config) != bool(args.device):
        raise UserError("--config and --device go together (personalize the card for one device)")
    config = device = None
    image = Path(args.image)
    recover(image.parent)  # a killed build's outputs there finish (or go) first
    protected = manifest_inputs(image)
    if args.config:
        from builder.config.fleet import load
        from builder.fleet.personalize import find_device, open_golden, protected_inputs

        config = load(Path(args.config))
        device = find_device(config, args.device)
        if image.is_file():
            open_golden(image)  # what personalizing needs, checked before any write
        protected = protected_inputs(config, image)
    then = None
    if config is not None and device is not None:
        then = functools.partial(_personalize_card, config, device, args.target, Path(args.image))
    flash(
        image,
        Path(args.target),
        Path(args.bmap) if args.bmap else None,
        args.yes,
        args.dry_run,
        then,
        protected,
    )
    if args.dry_run and device is not None:
        print(f"dry run: would then personalize the card as {device.hostname}")
    return 0


def _personalize_card(
    config: FleetConfig, device: Device, shown: str, golden: Path, written: Path
) -> None:
    from builder.fleet.personalize import apply, open_golden, record_known_hosts, secrets_for
    from builder.sources.digests import sha256_of

    secrets = secrets_for(config, device)
    changed = apply(open_golden(written), config, device, secrets, sha256_of(golden))
    record_known_hosts(config, [device])
    print(f"personalized {shown} as {device.hostname} ({changed} files)")
