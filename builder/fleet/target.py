"""What a flash target is (a whole disk or a file), read from sysfs and procfs: the facts
`BlockDestination.refusal` judges (a partition, an internal disk, anything mounted, the
disk holding `/`, a reader with no card, a card too small).

Every sysfs/procfs read goes through `system_root`, so the rules are tested on
fabricated trees.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from builder.fleet.destination import BlockDestination, Destination, FileDestination
from builder.util.errors import UserError


def describe(path: Path, system_root: Path = Path("/")) -> Destination:
    """What `path` is, from sysfs and procfs under `system_root`. The rules judge the path
    resolved (`//dev/sdb`, `sdb` typed in /dev, symlinks); messages name it as given."""
    resolved = Path(os.path.realpath(path))
    try:
        st = os.stat(resolved)
    except FileNotFoundError:
        if resolved.parent.is_dir() and not resolved.is_relative_to("/dev"):
            return FileDestination(path)
        raise UserError(f"{path}: no such device or file") from None
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror}") from None
    if stat.S_ISREG(st.st_mode):
        if resolved.is_relative_to("/dev"):
            raise UserError(f"{path}: a regular file in /dev, not a disk: a mistyped device name?")
        return FileDestination(path, size=st.st_size)
    if not stat.S_ISBLK(st.st_mode):
        raise UserError(f"{path}: not a block device or regular file")
    sysdev = system_root / "sys/dev/block" / f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    node = sysdev.resolve()
    if not node.exists():
        raise UserError(f"{path}: the kernel does not know this device (no {sysdev})")
    return block_target(path, node, system_root)


def block_target(path: Path, node: Path, system_root: Path = Path("/")) -> BlockDestination:
    """The disk (or partition) whose sysfs directory is `node`, to be written at `path`."""
    partition = (node / "partition").exists()
    disk = node.parent if partition else node
    children = tuple(sorted(p.name for p in disk.iterdir() if (p / "partition").exists()))
    devs = {_read(disk / "dev")} | {_read(disk / c / "dev") for c in children}
    mounts, root_devs = _mounts(system_root)
    above = _closure(system_root, devs, "holders", parents=False)
    return BlockDestination(
        path=path,
        name=node.name,
        size=_sectors(disk) * 512,
        vendor=_read(disk / "device/vendor"),
        model=_read(disk / "device/model") or _read(disk / "device/name"),
        serial=_read(disk / "device/serial") or _udev_serial(system_root, _read(disk / "dev")),
        transport=_transport(disk, system_root),
        removable=_read(disk / "removable") == "1",
        partition=partition,
        mounted=tuple(sorted({point for found, point in mounts if found & above})),
        holds_root=bool(devs & _closure(system_root, root_devs, "slaves", parents=True)),
        children=children,
    )


def _sectors(disk: Path) -> int:
    text = _read(disk / "size")
    return int(text) if text.isdigit() else 0


def _read(path: Path) -> str:
    """A sysfs value; what a device says need not be UTF-8 (undecodable bytes shown as U+FFFD)."""
    try:
        return path.read_bytes().decode("utf-8", errors="replace").strip()
    except OSError:
        return ""


def _transport(disk: Path, system_root: Path) -> str:
    """usb or mmc from the disk's place in the device tree (judged below `system_root` only)."""
    try:
        where = "/" + str(disk.relative_to(system_root.resolve()))
    except ValueError:
        where = str(disk)
    return "usb" if "/usb" in where else ("mmc" if "/mmc" in where else "")


def _udev_serial(system_root: Path, dev: str) -> str:
    found = {}
    for line in _read(system_root / f"run/udev/data/b{dev}").splitlines():
        key, _, value = line.partition("=")
        found[key] = value
    return found.get("E:ID_SERIAL_SHORT") or found.get("E:ID_SERIAL", "")


def _mounts(system_root: Path) -> tuple[list[tuple[set[str], str]], set[str]]:
    """(major:minor set, mount point) of every mount, and the major:minor set holding /.

    A mount's own major:minor is anonymous (0:NN) on btrfs and the like, so the
    device named as its source counts too.
    """
    mounts: list[tuple[set[str], str]] = []
    root: set[str] = set()
    for line in _read(system_root / "proc/self/mountinfo").splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        devs = {fields[2]} | _source_dev(system_root, fields)
        point = _unescape(fields[4])
        mounts.append((devs, point))
        if point == "/":
            root |= devs  # every mount stacked on / counts: refusing too much is safe
    return mounts, root


def _source_dev(system_root: Path, fields: list[str]) -> set[str]:
    """major:minor of the /dev/... source after the ' - ' separator of a mountinfo line."""
    try:
        source = fields[fields.index("-", 6) + 2]
    except (ValueError, IndexError):
        return set()
    if not source.startswith("/dev/"):
        return set()
    name = (system_root / source[1:]).resolve().name  # /dev/mapper/x -> dm-0
    dev = _read(system_root / "sys/class/block" / name / "dev")
    return {dev} if dev else set()


def _unescape(point: str) -> str:
    """mountinfo writes space, tab, newline and backslash in octal (\\040)."""
    for code in ("040", "011", "012", "134"):
        point = point.replace(f"\\{code}", chr(int(code, 8)))
    return point


def _closure(system_root: Path, devs: set[str], link: str, parents: bool) -> set[str]:
    """`devs` and every device reached through sysfs `link` ("slaves": what they are built on;
    "holders": device-mapper/RAID built on them), and with `parents` their whole disks."""
    found: set[str] = set()
    todo = list(devs)
    while todo:
        current = todo.pop()
        if not current or current in found:
            continue
        found.add(current)
        node = (system_root / "sys/dev/block" / current).resolve()
        if parents and (node / "partition").exists():
            todo.append(_read(node.parent / "dev"))
        if (node / link).is_dir():
            todo += [_read(other.resolve() / "dev") for other in (node / link).iterdir()]
    return found
