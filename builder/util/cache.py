"""Where pifleet keeps what is slow to make or fetch: downloads, base images, kernels."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from builder.util.errors import BuildError, UserError


def cache_dir(kind: str) -> Path:
    """`$PIFLEET_CACHE/<kind>` (default `$XDG_CACHE_HOME/pifleet/<kind>`), created on demand.

    A cache that cannot be made is one line naming the variable that put it there, never the
    input that happened to be looked up in it: bad input (exit 2) when that is a file or a
    place the user may not write, a run-time failure (exit 1) otherwise (a full disk)."""
    root = os.environ.get("PIFLEET_CACHE")
    source = "PIFLEET_CACHE"
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        source = "XDG_CACHE_HOME" if xdg else "HOME"
        root = str(Path(xdg or Path.home() / ".cache") / "pifleet")
    path = Path(root) / kind
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        bad_input = exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EACCES, errno.EROFS)
        error = UserError if bad_input else BuildError
        what = "not a directory" if exc.errno == errno.EEXIST else exc.strerror
        raise error(
            f"{source}: {root}: cannot hold pifleet's cache ({kind}/): {what}; "
            "set PIFLEET_CACHE to a directory you can write"
        ) from None
    return path
