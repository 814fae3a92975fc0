"""sha256 of input files, remembered across builds.

Hashing a 2 GiB base costs about as much as copying it (SHA-256 runs at about
1.2 GB/s here), so a file's digest is cached under its identity: path, device,
inode, size, mtime and ctime. Any write to the file changes its ctime, which
no user-space tool can set back, so a stale entry cannot match.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from builder.disk.sparse import Advance, sha256_file
from builder.util.atomic import write_atomic
from builder.util.cache import cache_dir


def sha256_of(path: Path, advance: Advance | None = None) -> str:
    """sha256 of `path` (holes read as zeros without touching the disk), cached by identity."""
    entry = cache_dir("digests") / _identity(path)
    try:
        cached = entry.read_text().strip()
        if len(cached) == 64:
            return cached
    except OSError:
        pass
    digest = sha256_file(path, advance)
    with contextlib.suppress(OSError):  # an unwritable cache only costs time
        write_atomic(entry, (digest + "\n").encode())
    return digest


def _identity(path: Path) -> str:
    st = os.stat(path)
    key = f"{path.resolve()}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()
