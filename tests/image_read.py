"""Reading an image back with independent tools (sfdisk, mtools, debugfs), never with
pifleet's own code: what a test claims about an image is checked the way a user would.

The one copy of each reader the tests share: sha256 of a file (or of a byte range of it),
the partition table, a file or listing of the boot (FAT) partition, a debugfs command on
the root (ext4) partition, and a file of a root filesystem cut out of a guest's disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def sha256(path: Path, start: int = 0, length: int | None = None) -> str:
    """The sha256 of `path`, or of its `length` bytes from `start`, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        remaining = os.fstat(f.fileno()).st_size - start if length is None else length
        while remaining > 0:
            chunk = f.read(min(remaining, 1 << 22))
            assert chunk, f"{path} ended early"
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def partitions(image: Path) -> list[dict]:
    out = subprocess.run(
        ["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)["partitiontable"]["partitions"]


def fat_read(image: Path, path: str) -> bytes:
    """The bytes of `path` on the image's boot (first) partition, read with mtype."""
    boot = partitions(image)[0]["start"] * 512
    proc = subprocess.run(
        ["mtype", "-i", f"{image}@@{boot}", f"::{path}"], capture_output=True, env=MTOOLS_ENV
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def fat_names(image: Path, path: str = "/") -> str:
    """`mdir -b` of `path` on the boot partition: one `::/path` a line."""
    boot = partitions(image)[0]["start"] * 512
    return subprocess.run(
        ["mdir", "-b", "-i", f"{image}@@{boot}", f"::{path}"],
        capture_output=True,
        text=True,
        env=MTOOLS_ENV,
    ).stdout


def root_spec(image: Path) -> str:
    """The root (second) partition as e2fsprogs' tools take it: IMAGE?offset=BYTES."""
    return f"{image}?offset={partitions(image)[1]['start'] * 512}"


def debugfs(image: Path, command: str, *, offset: int | None = None) -> str:
    """debugfs -R COMMAND on the root partition (or the ext4 file system at `offset`)."""
    spec = root_spec(image) if offset is None else f"{image}?offset={offset}"
    return subprocess.run(
        ["debugfs", "-R", command, spec], capture_output=True, text=True, check=True
    ).stdout


def root_read(image: Path, path: str, tmp: Path) -> bytes:
    """The bytes of `path` on the root partition (dumped by debugfs through `tmp`)."""
    dest = tmp / "dumped"
    dest.unlink(missing_ok=True)
    debugfs(image, f"dump {path} {dest}")
    return dest.read_bytes()


def ext4_read(root: Path, path: str) -> bytes:
    """The bytes of `path` in a file system image `root` (a root partition cut out)."""
    out = subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(root)], capture_output=True, check=True
    )
    return out.stdout


def squeezed(raw: bytes) -> bytes:
    """`raw` with every run of NUL bytes cut to one NUL. A needle with no NUL byte in it lies
    inside one NUL-free run of `raw`, so it is in the result exactly when it is in `raw`, and
    the searches run over the data only, not over a mostly empty partition (10x faster)."""
    return re.sub(rb"\0+", b"\0", raw)
