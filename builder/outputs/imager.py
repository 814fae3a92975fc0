"""`<name>.rpi-imager-manifest`: the built image as Raspberry Pi Imager 2.x's local manifest.

A manifest is an OS list (Imager validates it against doc/json-schema/os-list-schema.json),
opened in Imager by double-click, `rpi-imager <file>` or "Use custom". It replaces the
`<name>.os_list.json` earlier versions wrote: same content, but the extension Imager registers
(application/vnd.raspberrypi.imager-manifest+json), so one file serves both uses.

Like Imager's own create_local_json.py, `url` and `bmap_url` are file:// URIs of the outputs
where the build wrote them. `init_format` is the seed format of the image, so Imager keeps
its customisation screen and writes the files that image reads; `capabilities` offer the
interface options only for formats that can apply them (cloudinit-rpi, rpi-preseed).
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Imager's device tags for 64-bit and 32-bit capable boards.
DEVICES = {
    "arm64": ["pi5-64bit", "pi4-64bit", "pi3-64bit"],
    "armhf": ["pi5-32bit", "pi4-32bit", "pi3-32bit", "pi2-32bit"],
}
ARCHITECTURE = {"arm64": "armv8", "armhf": "armhf"}
ICON = "icons/cat_raspberry_pi_os.png"  # an icon Imager ships, so none is downloaded
INTERFACES = ["i2c", "onewire", "serial", "spi", "usb_otg"]
# Preferred download, first found wins: Imager's own format, then zstd, then the raw image.
DOWNLOAD_ORDER = (".img.xz", ".img.zst", ".img")


@dataclass(frozen=True)
class File:
    path: Path  # final location
    size: int
    sha256: str


def entry(
    name: str,
    description: str,
    arch: str,
    init_format: str,
    image: File,
    downloads: list[File],
    bmap: Path | None,
    epoch: int,
) -> dict[str, Any]:
    """The OS list entry for the image; `downloads` are the image and its compressed copies."""
    download = next(
        (d for suffix in DOWNLOAD_ORDER for d in downloads if d.path.name.endswith(suffix)), image
    )
    release = datetime.datetime.fromtimestamp(epoch, datetime.UTC).date().isoformat()
    capabilities = ["passwordless_sudo"]
    if init_format in ("cloudinit-rpi", "rpi-preseed"):
        capabilities += INTERFACES
    item: dict[str, Any] = {
        "name": name,
        "description": description,
        "icon": ICON,
        "url": download.path.resolve().as_uri(),
        "release_date": release,
        "extract_size": image.size,
        "extract_sha256": image.sha256,
        "image_download_size": download.size,
        "image_download_sha256": download.sha256,
        "devices": DEVICES[arch],
        "architecture": ARCHITECTURE[arch],
        "init_format": init_format,
        "capabilities": sorted(capabilities),
    }
    if bmap is not None:
        item["bmap_url"] = bmap.resolve().as_uri()
    return item


def manifest(item: dict[str, Any]) -> bytes:
    return (json.dumps({"os_list": [item]}, indent=2) + "\n").encode()
