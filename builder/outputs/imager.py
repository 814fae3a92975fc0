"""A Raspberry Pi Imager OS list for the built image, so Imager 2.x can flash it (and still
offer its own customisation: `init_format: cloudinit-rpi`)."""

from __future__ import annotations

import datetime
import json

# Imager's device tags for 64-bit and 32-bit capable boards.
DEVICES = {
    "arm64": ["pi5-64bit", "pi4-64bit", "pi3-64bit"],
    "armhf": ["pi5-32bit", "pi4-32bit", "pi3-32bit", "pi2-32bit"],
}


def os_list(
    name: str,
    description: str,
    arch: str,
    image_size: int,
    image_sha256: str,
    download_name: str,
    download_size: int,
    download_sha256: str,
    epoch: int,
    url_base: str = "",
) -> bytes:
    """The JSON Imager reads: one entry pointing at the download (the .img.xz when there is one)."""
    release = datetime.datetime.fromtimestamp(epoch, datetime.UTC).date().isoformat()
    entry = {
        "name": name,
        "description": description,
        "url": url_base + download_name,
        "release_date": release,
        "extract_size": image_size,
        "extract_sha256": image_sha256,
        "image_download_size": download_size,
        "image_download_sha256": download_sha256,
        "devices": DEVICES[arch],
        "init_format": "cloudinit-rpi",
    }
    return (json.dumps({"os_list": [entry]}, indent=2) + "\n").encode()
