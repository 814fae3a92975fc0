"""Which first-boot customisation format an image understands, read from the image itself.

Raspberry Pi Imager trusts its OS list's `init_format`; pifleet starts from an
image file, so it looks at what is installed, in this order (first match wins):

| format          | evidence                                                                        |
|-----------------|---------------------------------------------------------------------------------|
| `rpi-preseed`   | the rpi-preseed package (it conflicts with cloud-init)                          |
| `cloudinit`     | cloud-init on Ubuntu: os-release ID=ubuntu, or the NoCloud seed read from the   |
|                 | `system-boot` label (fs_label in /etc/cloud/cloud.cfg.d, or the FAT label)     |
| `cloudinit-rpi` | cloud-init on Raspberry Pi OS: rpi-cloud-init-mods or raspberrypi-sys-mods      |
|                 | installed, or /etc/rpi-issue present                                            |
| `cloudinit`     | cloud-init anywhere else (pifleet's Debian QEMU base)                           |
| `systemd`       | no cloud-init, no rpi-preseed: firstrun.sh run by `systemd.run=` (Bookworm);    |
|                 | with raspberrypi-sys-mods' imager_custom when the image ships it                |

Packages come from the dpkg database; an image without one (a minimal test
layout) is judged by marker files (/usr/bin/cloud-init, imager_custom, ...). What a format
needs (its package and marker file) is its SeedFormat record's (builder/seed/formats.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from builder.detect import dpkg
from builder.disk.image import Image
from builder.layout import IMAGER_CUSTOM, USERCONF
from builder.seed.formats import BY_NAME, FORMATS

CLOUD_CFG_D = "/etc/cloud/cloud.cfg.d"
CLOUD_INIT = BY_NAME["cloudinit"].needs
PRESEED = BY_NAME["rpi-preseed"].needs
# Package -> the file that stands for it in an image without a dpkg database.
MARKERS = {
    **{f.needs: f.marker for f in FORMATS if f.needs and f.marker},
    "raspberrypi-sys-mods": IMAGER_CUSTOM,
    "network-manager": "/usr/sbin/NetworkManager",
    "userconf-pi": USERCONF,
}


@dataclass(frozen=True)
class FormatFacts:
    format: str  # a SeedFormat name (builder/seed/formats.py BY_NAME)
    reason: str  # the evidence, for `pifleet inspect`
    packages: tuple[str, ...]  # the relevant packages found (dpkg or marker files)
    imager_custom: bool  # raspberrypi-sys-mods' helper is there (firstrun.sh calls it)
    userconf: bool
    network_manager: bool
    datasource: str | None  # NoCloud seed location from cloud.cfg.d, if any


def detect_format(image: Image, os_id: str, rpi_issue: bool) -> FormatFacts:
    status = image.root.read(dpkg.STATUS)
    markers = image.root.stat_many(sorted(set(MARKERS.values())))
    if status is not None:
        names = {p.name for p in dpkg.installed(status)}
        found = {name for name in MARKERS if name in names}
        found |= {n for n in ("rpi-cloud-init-mods",) if n in names}
        how = "dpkg"
    else:
        found = {name for name, path in MARKERS.items() if markers[path] is not None}
        how = "marker files"
    datasource = _datasource(image) if CLOUD_INIT in found else None
    fmt, why = _choose(found, os_id, rpi_issue, datasource, image.boot.label())
    return FormatFacts(
        format=fmt,
        reason=f"{why} ({how})",
        packages=tuple(sorted(found)),
        imager_custom=markers[IMAGER_CUSTOM] is not None,
        userconf=markers[USERCONF] is not None,
        network_manager="network-manager" in found,
        datasource=datasource,
    )


def _choose(
    found: set[str], os_id: str, rpi_issue: bool, datasource: str | None, boot_label: str
) -> tuple[str, str]:
    if PRESEED in found:
        return "rpi-preseed", "rpi-preseed is installed"
    if CLOUD_INIT in found:
        ubuntu_seed = "fs_label: system-boot" in (datasource or "") or boot_label == "system-boot"
        if os_id == "ubuntu" or ubuntu_seed:
            return "cloudinit", "cloud-init on Ubuntu (NoCloud on system-boot)"
        if found & {"rpi-cloud-init-mods", "raspberrypi-sys-mods"} or rpi_issue:
            return "cloudinit-rpi", "cloud-init on Raspberry Pi OS"
        return "cloudinit", "cloud-init"
    if "raspberrypi-sys-mods" in found:
        return "systemd", "raspberrypi-sys-mods without cloud-init (Bookworm)"
    return "systemd", "no cloud-init or rpi-preseed: firstrun.sh with plain commands"


def _datasource(image: Image) -> str | None:
    """The NoCloud seed settings ('seedfrom: ...' or 'fs_label: ...') in cloud.cfg.d."""
    names = image.root.listdir(CLOUD_CFG_D) if image.root.stat(CLOUD_CFG_D) else []
    image.root.prefetch([f"{CLOUD_CFG_D}/{n}" for n in names if n.endswith(".cfg")])
    for name in names:
        if not name.endswith(".cfg"):
            continue
        text = (image.root.read(f"{CLOUD_CFG_D}/{name}") or b"").decode(errors="replace")
        for line in text.splitlines():
            key = line.strip().split(":", 1)[0]
            if key in ("seedfrom", "fs_label"):
                return " ".join(line.split())
    return None
