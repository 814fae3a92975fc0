"""Where pifleet keeps what is slow to make or fetch: downloads, base images, kernels."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """`$PIFLEET_CACHE/<kind>` (default `$XDG_CACHE_HOME/pifleet/<kind>`), created on demand."""
    root = os.environ.get("PIFLEET_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "pifleet")
    path = Path(root) / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
