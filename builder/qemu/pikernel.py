"""Whether an image's own kernel boots under QEMU's `-M virt`, and its name for the timeline.

| image family | its kernel | under -M virt |
|---|---|---|
| pifleet's base, Debian's raspi images | the root's /boot/vmlinuz, a Debian generic kernel (`-arm64`, `-armmp`, `-armmp-lpae`) | boots: it is used |
| Raspberry Pi OS | kernel8.img, kernel_2712.img, kernel7l.img, kernel7.img, kernel.img on the boot partition (pi-gen stage1 `00-boot-files`), modules `<v>+rpt-rpi-*` (older: `<v>-v8+`, `-v7l+`) | none in the root: the supplied kernel |
| Ubuntu for Raspberry Pi | the root's /boot/vmlinuz, a link to `vmlinuz-<v>-raspi` (the linux-raspi flavour), copied to the boot partition by flash-kernel | a Pi kernel: the supplied kernel |

A root kernel is a Pi kernel when the name /boot/vmlinuz resolves to carries a Pi flavour
(PI_FLAVOUR); then, as when there is none, boot-test boots the generic kernel pifleet supplies
(builder/qemu/supplied.py) and says which kernel it stood in for.
"""

from __future__ import annotations

import re

from builder.disk.image import Image

GENERIC = "/boot/vmlinuz"
# Kernel release flavours that only a Raspberry Pi boots: Ubuntu's linux-raspi (`-raspi`,
# older `-raspi2`), Pi OS's (`+rpt-rpi-v8`, `-v8+`, `-v7l+`, `-v7+`, `+`), and `-rpi-`.
PI_FLAVOUR = re.compile(r"(-raspi\d*$|\+rpt-rpi-|-v[678]l?\+$|-rpi-|\+$)")
PI_BOOT_KERNELS = ("kernel8.img", "kernel_2712.img", "kernel7l.img", "kernel7.img", "kernel.img")


def root_kernel(image: Image) -> str | None:
    """The root's generic kernel (/boot/vmlinuz resolved), or None when the root has none or
    only a Raspberry Pi kernel."""
    if image.root.stat(GENERIC) is None:
        return None
    target = image.root.resolve(GENERIC)
    return None if is_pi_kernel(target) else target


def is_pi_kernel(path: str) -> bool:
    """Whether a kernel file name (`vmlinuz-6.8.0-1004-raspi`) is of a Pi-only flavour."""
    name = path.rsplit("/", 1)[-1]
    return name != "vmlinuz" and PI_FLAVOUR.search(name.removeprefix("vmlinuz-")) is not None


def pi_kernel_name(image: Image) -> str:
    """The image's own kernel, as the timeline names it: the root's Pi kernel, else the first
    Pi kernel file on the boot partition."""
    if image.root.stat(GENERIC) is not None:
        return image.root.resolve(GENERIC)
    names = {n.lower(): n for n in image.boot.listdir("/")}
    for name in PI_BOOT_KERNELS:
        if name in names:
            return names[name]
    return "the image's kernel"
