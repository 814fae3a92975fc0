"""A sysfs/procfs/udev tree under a temporary root, laid out as the kernel lays out its own:
the disks `pifleet flash` judges (`builder.fleet.target`) and a station watches for
(`builder.fleet.cards`), with files under `<root>/dev` standing in for the disks."""

from __future__ import annotations

import os
from pathlib import Path

USB_SCSI = "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0"
SATA_SCSI = "devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0"
MMC_CARD = "devices/platform/emmc2bus/fe340000.mmc/mmc_host/mmc0/mmc0:aaaa"
CARD_SECTORS = 124_735_488  # a "64 GB" card: 59.5 GiB
TARGET_DEV = "240:0"  # 240-254: local/experimental majors, never a real disk


class FakeSystem:
    """A sysfs/procfs/udev tree under `root`, laid out as the kernel lays out its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dirs: dict[str, Path] = {}
        self.mountinfo: list[str] = []

    def disk(
        self, parent: str, kname: str, dev: str, parts: dict[str, str], /, **attrs: str
    ) -> FakeSystem:
        sysfs = self.root / "sys"
        block = sysfs / parent / "block" / kname
        block.mkdir(parents=True)
        (block / "device").symlink_to("../..")
        for key in ("size", "removable", "diskseq"):
            (block / key).write_text(attrs.pop(key, "0") + "\n")
        for key, value in attrs.items():
            (sysfs / parent / key).write_text(value + "\n")
        self._node(block, kname, dev)
        for number, (part, part_dev) in enumerate(parts.items(), 1):
            (block / part).mkdir()
            (block / part / "partition").write_text(f"{number}\n")
            self._node(block / part, part, part_dev)
        listed = self.root / "sys/block" / kname  # what a station lists: last, as a whole
        listed.parent.mkdir(parents=True, exist_ok=True)
        listed.symlink_to(os.path.relpath(block, listed.parent))
        return self

    def dm(self, name: str, dev: str, slaves: list[str]) -> FakeSystem:
        block = self.root / "sys/devices/virtual/block" / name
        (block / "slaves").mkdir(parents=True)
        (block / "holders").mkdir()
        self._node(block, name, dev)
        for slave in slaves:
            (block / "slaves" / slave).symlink_to(
                os.path.relpath(self.dirs[slave], block / "slaves")
            )
            holders = self.dirs[slave] / "holders"
            holders.mkdir(exist_ok=True)
            (holders / name).symlink_to(os.path.relpath(block, holders))
        return self

    def _node(self, directory: Path, name: str, dev: str) -> None:
        (directory / "dev").write_text(dev + "\n")
        self.dirs[name] = directory
        for link in (self.root / "sys/dev/block" / dev, self.root / "sys/class/block" / name):
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(directory, link.parent))

    def mount(self, dev: str, point: str, fstype: str = "ext4", source: str = "") -> FakeSystem:
        escaped = point.replace(" ", "\\040")
        n = len(self.mountinfo) + 20
        self.mountinfo.append(
            f"{n} 1 {dev} / {escaped} rw,relatime shared:{n} - {fstype} {source or 'none'} rw"
        )
        return self

    def udev(self, dev: str, *lines: str) -> FakeSystem:
        path = self.root / "run/udev/data" / f"b{dev}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        return self

    def done(self) -> Path:
        proc = self.root / "proc/self"
        proc.mkdir(parents=True, exist_ok=True)
        if not any(line.split()[4] == "/" for line in self.mountinfo):
            self.mount("254:1", "/", source="/dev/vda1")
        (proc / "mountinfo").write_text("\n".join(self.mountinfo) + "\n")
        return self.root


def usb_card(system: FakeSystem, dev: str = TARGET_DEV, **attrs: str) -> FakeSystem:
    attrs = {"size": str(CARD_SECTORS), "removable": "1", "vendor": "Generic", **attrs}
    attrs.setdefault("model", "STORAGE DEVICE")
    system.disk(USB_SCSI, "sdb", dev, {"sdb1": "241:1", "sdb2": "241:2"}, **attrs)
    return system.udev(
        dev, "E:ID_SERIAL=Generic_STORAGE_DEVICE_000000000819-0:0", "E:ID_SERIAL_SHORT=000000000819"
    )


def usb_reader(system: FakeSystem, n: int, sectors: int = 0, serial: str = "") -> Path:
    """A USB card reader `sd<letter>` on its own port (major 240, minor 16*n), holding a card
    of `sectors` (0: empty), with a regular file as its /dev node; the node's path."""
    kname = "sd" + "bcdefghijklmnopqrstuvwxyz"[n]
    dev = f"240:{16 * n}"
    port = f"devices/pci0000:00/0000:00:14.0/usb2/2-{n + 1}/2-{n + 1}:1.0/host{n + 6}"
    parent = f"{port}/target{n + 6}:0:0/{n + 6}:0:0:0"
    if serial:
        system.udev(dev, f"E:ID_SERIAL_SHORT={serial}")
    node = system.root / "dev" / kname
    node.parent.mkdir(parents=True, exist_ok=True)
    with open(node, "wb") as card:
        card.truncate(sectors * 512)  # a disk is as big as its medium
    system.disk(parent, kname, dev, {}, size=str(sectors), removable="1", diskseq=str(n + 1),
                vendor="Generic", model="STORAGE DEVICE")  # fmt: skip
    return node


def push_card(system: FakeSystem, kname: str, sectors: int, serial: str) -> None:
    """A card pushed into the reader: its size, a new disk sequence number and serial (a
    node that is not a plain file, such as a link to /dev/full, is left as it is)."""
    block = system.root / "sys/block" / kname
    dev = (block / "dev").read_text().strip()
    system.udev(dev, f"E:ID_SERIAL_SHORT={serial}")
    node = system.root / "dev" / kname
    if node.is_file() and not node.is_symlink():  # a file as the disk: as big as its card
        with open(node, "r+b") as card:
            card.truncate(sectors * 512)
    seq = int((block / "diskseq").read_text()) + 100
    (block / "diskseq").write_text(f"{seq}\n")
    (block / "size").write_text(f"{sectors}\n")


def pull_card(system: FakeSystem, kname: str) -> None:
    """The card taken out: the reader stays, with no medium."""
    (system.root / "sys/block" / kname / "size").write_text("0\n")
