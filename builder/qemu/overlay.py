"""A copy-on-write view of an image for a test boot, with boot-partition edits in it.

The image under test is never written: QEMU gets a qcow2 overlay backed by
it. Files for the test boot (the test server's URL and token) are written by
carving the boot partition out to a sparse file, editing that with mtools, and
copying only the byte ranges that changed into the overlay with `qemu-io`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from builder.disk import sparse
from builder.disk.fat import FatFilesystem
from builder.disk.table import read_table
from builder.util.errors import BuildError
from builder.util.private import private_dir, write_private
from builder.util.run import PRIVATE_UMASK, require_tool, run

log = logging.getLogger("pifleet.overlay")

_BLOCK = 64 * 1024


def create(image: Path, overlay: Path, size: int | None = None) -> None:
    """A qcow2 overlay backed by the raw `image` (absolute path, so the overlay can move);
    `size`: a larger virtual size (a board's SD card), the image itself unchanged."""
    require_tool("qemu-img", "qemu-utils")
    run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            str(image.resolve()),
            "-F",
            "raw",
            str(overlay),
            *([str(size)] if size is not None else []),
        ],
        what="qemu-img create",
        umask=PRIVATE_UMASK,  # the overlay will hold the boot's token
    )


def write_boot_files(image: Path, overlay: Path, files: dict[str, bytes | None], epoch: int) -> int:
    """Write (None: delete) `files` in the boot partition as seen through `overlay`.

    Returns the number of bytes written to the overlay.
    """
    boot = next(p for p in read_table(image).partitions if p.is_fat)
    with private_dir("overlay", overlay.parent) as tmp:
        original = tmp / "boot.orig"
        edited = tmp / "boot.edited"
        sparse.extract(image, boot.start, boot.size, original)
        sparse.copy_file(original, edited)  # small: a FAT partition is mostly holes
        fat = FatFilesystem(edited, 0, epoch)
        for path, data in files.items():
            if data is None:
                fat.stage_delete(path)
            else:
                fat.stage(path, data)
        fat.flush()
        commands, chunks = [], tmp / "chunks"
        chunks.mkdir()
        for offset, length in changed_ranges(original, edited):
            chunk = chunks / f"{offset}"
            with open(edited, "rb") as f:
                f.seek(offset)
                write_private(chunk, f.read(length))
            commands += ["-c", f"write -q -s {chunk} {boot.start + offset} {length}"]
        if commands:
            run(["qemu-io", "-f", "qcow2", *commands, str(overlay)], what="qemu-io write")
        return sum(int(c.split()[-1]) for c in commands if c.startswith("write"))


def read_boot_file(image: Path, overlay: Path, path: str) -> bytes | None:
    """`path` in the boot partition as the guest left it in `overlay` (None: no such file).

    A Raspberry Pi's firmware reads cmdline.txt at every boot; QEMU's `-kernel` takes the
    command line once, so a test boot reads it again here before each reboot.
    """
    boot = next(p for p in read_table(image).partitions if p.is_fat)
    qcow2 = {"driver": "qcow2", "file": {"driver": "file", "filename": str(overlay.resolve())}}
    spec = {"driver": "raw", "offset": boot.start, "size": boot.size, "file": qcow2}
    with private_dir("overlay", overlay.parent) as tmp:
        raw = tmp / "boot.raw"
        run(
            ["qemu-img", "convert", "-O", "raw", "json:" + json.dumps(spec), str(raw)],
            what="qemu-img convert (the boot partition)",
            umask=PRIVATE_UMASK,  # the boot partition holds the boot's token
        )
        return FatFilesystem(raw, 0, 0).read(path)


def changed_ranges(a: Path, b: Path) -> list[tuple[int, int]]:
    """Block-aligned (offset, length) runs where `a` and `b` differ; holes compare as zeros."""
    size = os.path.getsize(a)
    if os.path.getsize(b) != size:
        raise BuildError("the edited boot partition changed size")
    runs: list[tuple[int, int]] = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        blocks = sorted(set(_blocks(fa.fileno(), size)) | set(_blocks(fb.fileno(), size)))
        for block in blocks:
            length = min(_BLOCK, size - block)
            if os.pread(fa.fileno(), length, block) == os.pread(fb.fileno(), length, block):
                continue
            if runs and sum(runs[-1]) == block:
                runs[-1] = (runs[-1][0], runs[-1][1] + length)
            else:
                runs.append((block, length))
    return runs


def _blocks(fd: int, size: int) -> Iterator[int]:
    for off, length in sparse.data_ranges(fd, 0, size):
        first = off - off % _BLOCK
        yield from range(first, off + length, _BLOCK)
