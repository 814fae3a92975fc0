"""Copies the first-boot agent (firstboot/) into the image and enables its two units:
pifleet-firstboot.service (the join) and pifleet-custody.service (secrets off the FAT).

The agent is plain source under /usr/lib/pifleet, run by the image's own python3. Its
`firstboot/__init__.py` gets pyproject's version written in (a device has no pip metadata).
"""

from __future__ import annotations

from pathlib import Path

from builder import version
from builder.disk.entries import Directory, File, Symlink
from builder.disk.image import Image
from builder.layout import (
    AGENT_DIR,
    CUSTODY_LINK,
    CUSTODY_NAME,
    CUSTODY_PATH,
    UNIT_NAME,
    UNIT_PATH,
    WANTS_LINK,
)
from builder.plan import Plan
from builder.util import bundled
from builder.util.render import render


def apply(image: Image, plan: Plan) -> None:
    package = bundled.package_dir("firstboot")
    image.root.stage(Directory(AGENT_DIR, 0o755))
    for src in agent_files(package):
        rel = src.relative_to(package.parent).as_posix()
        if src.is_dir():
            image.root.stage(Directory(f"{AGENT_DIR}/{rel}", 0o755))
        else:
            image.root.stage(File(f"{AGENT_DIR}/{rel}", 0o644, data=agent_source(src, package)))
    unit = render(UNIT_NAME, version=version(), agent_dir=AGENT_DIR)
    image.root.stage(File(UNIT_PATH, 0o644, data=unit))
    image.root.stage(Symlink(WANTS_LINK, UNIT_PATH))
    custody = render(
        CUSTODY_NAME, version=version(), agent_dir=AGENT_DIR, boot_mount=plan.flavor.boot_mount
    )
    image.root.stage(File(CUSTODY_PATH, 0o644, data=custody))
    image.root.stage(Symlink(CUSTODY_LINK, CUSTODY_PATH))


def agent_source(src: Path, package: Path) -> bytes:
    """The file as the image holds it: the source, and in `firstboot/__init__.py` a last line
    with the version (see firstboot/__init__.py)."""
    data = src.read_bytes()
    if src == package / "__init__.py":
        data += f'\n__version__ = "{version()}"\n'.encode()
    return data


def agent_files(package: Path) -> list[Path]:
    """The package's directories and .py files, without caches, in a stable order."""
    found = [package]
    for path in sorted(package.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        if path.is_dir() or path.suffix == ".py":
            found.append(path)
    return found
