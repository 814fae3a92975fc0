"""/etc/fstab: the boot partition is mounted readable by root only.

Until the first-boot agent has moved them into the root filesystem, the boot
partition (FAT, no owners) holds the device's secrets: its join token, node
password, SSH host key and Wi-Fi PSK. `vfat defaults` gives every local user
read access; `fmask=0077,dmask=0077` leaves it to root. Only the options field
of the boot partition's line changes; every other line and column is kept.
"""

from __future__ import annotations

import re

from builder.disk.entries import File
from builder.disk.image import Image
from builder.layout import FSTAB
from builder.plan import Plan

PRIVATE_MOUNT_OPTS = ("fmask=0077", "dmask=0077")
_REPLACED = ("fmask=", "dmask=", "umask=")
_LINE = re.compile(r"\s*(?P<spec>\S+)\s+(?P<dir>\S+)\s+(?P<type>\S+)\s+(?P<options>\S+)")


def apply(image: Image, plan: Plan) -> None:
    current = image.root.read(FSTAB)
    if current is None:
        return
    updated = private_boot(current.decode("utf-8", errors="replace"), plan.flavor.boot_mount)
    if updated is not None:
        image.root.stage(File(FSTAB, 0o644, data=updated.encode()))


def private_boot(text: str, mount: str) -> str | None:
    """`text` with the vfat line for `mount` made private; None when nothing changes."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        m = _LINE.match(line)
        if m is None or m["spec"].startswith("#") or (m["dir"], m["type"]) != (mount, "vfat"):
            continue
        kept = [o for o in m["options"].split(",") if not o.startswith(_REPLACED)]
        options = ",".join([*kept, *PRIVATE_MOUNT_OPTS])
        lines[i] = line[: m.start("options")] + options + line[m.end("options") :]
    updated = "".join(lines)
    return updated if updated != text else None
