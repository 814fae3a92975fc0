"""Changing a test image the way a device or a user would: files put into the root file
system with debugfs, and the agent's card report (report.json) left on the boot partition."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from builder.disk.image import Image


def write_root_files(image: Path, files: dict[str, bytes], tmp: Path) -> None:
    """Put `files` into the image's root filesystem with debugfs (parents created)."""
    from builder.disk.table import read_table

    spec = f"{image}?offset={read_table(image).partitions[1].start}"
    for i, (path, data) in enumerate(files.items()):
        source = tmp / f"root-file-{i}"
        source.write_bytes(data)
        parts = Path(path).parts
        cmds = [f"mkdir {'/'.join(parts[: n + 1])[1:]}" for n in range(1, len(parts) - 1)]
        for cmd in [*cmds, f"write {source} {path}"]:
            subprocess.run(["debugfs", "-w", "-R", cmd, spec], check=True, capture_output=True)


def put_report(image: Path, report: dict[str, object]) -> None:
    opened = Image.open(image)
    opened.boot.stage("/pifleet/report.json", json.dumps(report).encode())
    opened.boot.flush()


def put_raw(image: Path, data: bytes) -> None:
    opened = Image.open(image)
    opened.boot.stage("/pifleet/report.json", data)
    opened.boot.flush()
