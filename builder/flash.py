"""`pifleet flash IMAGE /dev/sdX`: write an image to an SD card, safely, with its .bmap.

Refused: anything that is not a whole removable/USB/MMC disk, anything with a
mounted partition, and the disk holding `/`. pifleet unmounts nothing. The
card's model, size and serial are shown and the user must confirm (or pass
--yes). Only the mapped ranges are written; they are read back from the card
(page cache dropped first) and checked; then the card is personalized.

Every sysfs/procfs read goes through `system_root`, so the rules are tested on
fabricated trees.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builder import bmap
from builder.console import human_size, progress
from builder.disk.sparse import Advance
from builder.errors import BuildError, UserError

_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Target:
    path: Path
    block: bool
    name: str = ""  # sdb, mmcblk0
    size: int = 0
    model: str = ""
    serial: str = ""
    transport: str = ""  # usb, mmc, or "" when neither
    removable: bool = False
    partition: bool = False
    mounted: tuple[str, ...] = ()
    holds_root: bool = False
    children: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        if not self.block:
            return f"{self.path} (a regular file)"
        facts = [self.model or "unknown model", human_size(self.size)]
        if self.serial:
            facts.append(f"serial {self.serial}")
        if self.transport:
            facts.append(self.transport.upper())
        return f"{self.path} ({', '.join(facts)})"


def describe(path: Path, system_root: Path = Path("/")) -> Target:
    """What `path` is, from sysfs and procfs under `system_root`."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if path.parent.is_dir() and not str(path).startswith("/dev/"):
            return Target(path, block=False)
        raise UserError(f"{path}: no such device or file") from None
    if stat.S_ISREG(st.st_mode):
        return Target(path, block=False, size=st.st_size)
    if not stat.S_ISBLK(st.st_mode):
        raise UserError(f"{path}: not a block device or regular file")
    sysdev = system_root / "sys/dev/block" / f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    node = sysdev.resolve()
    if not node.exists():
        raise UserError(f"{path}: the kernel does not know this device (no {sysdev})")
    partition = (node / "partition").exists()
    disk = node.parent if partition else node
    children = tuple(sorted(p.name for p in disk.iterdir() if (p / "partition").exists()))
    devs = {_read(disk / "dev")} | {_read(disk / c / "dev") for c in children}
    mounted, root_dev = _mounts(system_root)
    return Target(
        path=path,
        block=True,
        name=node.name,
        size=int(_read(disk / "size") or 0) * 512,
        model=" ".join(
            filter(
                None,
                [
                    _read(disk / "device/vendor"),
                    _read(disk / "device/model") or _read(disk / "device/name"),
                ],
            )
        ),
        serial=_read(disk / "device/serial") or _udev_serial(system_root, _read(disk / "dev")),
        transport="usb" if "/usb" in str(disk) else ("mmc" if "/mmc" in str(disk) else ""),
        removable=_read(disk / "removable") == "1",
        partition=partition,
        mounted=tuple(sorted(point for dev, point in mounted if dev in devs)),
        holds_root=bool(devs & _with_slaves(system_root, root_dev)),
        children=children,
    )


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _udev_serial(system_root: Path, dev: str) -> str:
    for line in _read(system_root / f"run/udev/data/b{dev}").splitlines():
        if line.startswith("E:ID_SERIAL_SHORT=") or line.startswith("E:ID_SERIAL="):
            return line.split("=", 1)[1]
    return ""


def _mounts(system_root: Path) -> tuple[list[tuple[str, str]], str]:
    """(major:minor, mount point) of every mount, and the major:minor holding /."""
    mounts, root = [], ""
    for line in _read(system_root / "proc/self/mountinfo").splitlines():
        fields = line.split()
        if len(fields) > 4:
            mounts.append((fields[2], fields[4]))
            if fields[4] == "/":
                root = fields[2]
    return mounts, root


def _with_slaves(system_root: Path, dev: str) -> set[str]:
    """`dev`, its parent disk and, through device-mapper slaves, every disk under it."""
    found, todo = set(), [dev]
    while todo:
        current = todo.pop()
        if not current or current in found:
            continue
        found.add(current)
        node = (system_root / "sys/dev/block" / current).resolve()
        if (node / "partition").exists():
            todo.append(_read(node.parent / "dev"))
        for slave in (node / "slaves").glob("*") if (node / "slaves").exists() else []:
            todo.append(_read(slave.resolve() / "dev"))
    return found


def refusal(target: Target, image_size: int) -> str | None:
    """Why `target` must not be written, or None."""
    t = target
    if not t.block:
        return None
    if t.holds_root:
        return f"{t.path} holds the running system's root filesystem"
    if t.partition:
        return f"{t.path} is a partition; give the whole disk"
    if not (t.removable or t.transport in ("usb", "mmc")):
        return f"{t.path} is not a removable, USB or MMC disk ({t.model or 'internal disk?'})"
    if t.mounted:
        return f"{t.path} is mounted at {', '.join(t.mounted)}; unmount it first (pifleet unmounts nothing)"
    if t.size and image_size > t.size:
        return f"{t.path} is too small: {human_size(t.size)} for a {human_size(image_size)} image"
    return None


def write(image: Path, target: Path, plan: bmap.Scan, advance: Advance | None = None) -> int:
    """Write `plan`'s mapped ranges of `image` to `target`; bytes written."""
    flags = os.O_WRONLY | (os.O_EXCL if target.is_block_device() else os.O_CREAT)
    if not target.is_block_device():
        with open(target, "wb") as f:
            f.truncate(plan.size)  # a fresh file: unmapped ranges are holes, not old data
    written = 0
    with open(image, "rb") as src:
        fd = os.open(target, flags)
        try:
            for r in plan.ranges:
                start, end = r.first * bmap.BLOCK, min((r.last + 1) * bmap.BLOCK, plan.size)
                while start < end:
                    chunk = os.pread(src.fileno(), min(_CHUNK, end - start), start)
                    written += os.pwrite(fd, chunk, start)
                    start += len(chunk)
                    if advance is not None:
                        advance(len(chunk))
            os.fsync(fd)
        finally:
            os.close(fd)
    return written


def verify(target: Path, plan: bmap.Scan) -> None:
    """Read the mapped ranges back from the card itself (cache dropped) and check them."""
    import hashlib

    fd = os.open(target, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        for r in plan.ranges:
            start, end = r.first * bmap.BLOCK, min((r.last + 1) * bmap.BLOCK, plan.size)
            digest = hashlib.sha256()
            while start < end:
                chunk = os.pread(fd, min(_CHUNK, end - start), start)
                if not chunk:
                    raise BuildError(f"{target}: read back ended early at byte {start}")
                digest.update(chunk)
                start += len(chunk)
            if r.sha256 and digest.hexdigest() != r.sha256:
                raise BuildError(
                    f"{target}: blocks {r.first}-{r.last} read back differently: bad card?"
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


def image_plan(image: Path, bmap_file: Path | None) -> bmap.Scan:
    """The ranges to write: from the .bmap next to the image when there is one, else scanned."""
    candidate = bmap_file or image.with_name(image.name + ".bmap")
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


def flash(
    image: Path, target_path: Path, bmap_file: Path | None, yes: bool, dry_run: bool
) -> Target:
    if not image.is_file():
        raise UserError(f"{image}: no such image file")
    target = describe(target_path)
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
    if target.block and not yes:
        confirm(target, image, plan)
    with progress(f"writing {target.path}", mapped) as bar:
        written = write(image, target_path, plan, bar.advance)
    with progress("verifying", mapped):
        verify(target_path, plan)
    print(
        f"wrote and verified {human_size(written)} ({written / max(mapped, 1):.3f}x the mapped data)"
    )
    return target


def command(args: argparse.Namespace) -> int:
    if bool(args.config) != bool(args.device):
        raise UserError("--config and --device go together (personalize the card for one device)")
    config = device = None
    if args.config:
        from builder.config import load
        from builder.personalize import find_device

        config = load(Path(args.config))
        device = find_device(config, args.device)
    target_path = Path(args.target)
    target = flash(
        Path(args.image),
        target_path,
        Path(args.bmap) if args.bmap else None,
        args.yes,
        args.dry_run,
    )
    if args.dry_run:
        if device is not None:
            print(f"dry run: would then personalize the card as {device.hostname}")
        return 0
    if config is not None and device is not None:
        from builder.personalize import apply, open_golden, record_known_hosts, secrets_for

        changed = apply(open_golden(target_path), config, device, secrets_for(config, device))
        record_known_hosts(config, [device])
        print(f"personalized {target.path} as {device.hostname} ({changed} files)")
    return 0
