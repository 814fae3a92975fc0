"""Air-gap images on a slow card: K3s imports every tarball in agent/images before the kubelet
starts, which on a Pi 3's SD card can take many minutes. The start timeout grows with the
tarballs' size, and K3s's own log lines tell an import still running from one that failed.

| K3s rule | K3s file:function |
|---|---|
| the kubelet starts only once containerd has imported the files of agent/images (.tar, .tar.gz/.tgz, .tar.zst/.tzst, .tar.bz2/.tbz, .tar.lz4) | pkg/agent/containerd/containerd.go:preloadImages, preloadFile; pkg/agent/run.go:startCRI |
| `Importing images from <file>` when a file starts, `Imported images from <file> in <duration>` when it is done | containerd.go:preloadFile, preloadImages |
| `Error encountered while importing <file>: <error>` (or `Failed to import <file>`) and K3s goes on with the next file | containerd.go:preloadImages; watcher.go |

The allowance assumes IMPORT_RATE bytes a second of unpacked image data (a Pi 3 writing to an
SD card), compressed tarballs counting COMPRESSION times their size.
"""

from __future__ import annotations

import re
from typing import List, Optional

from firstboot.paths import Root

IMAGES_DIR = "/var/lib/rancher/k3s/agent/images"
IMPORT_RATE = 2 * 1024 * 1024  # bytes of unpacked images a second
COMPRESSION = 3  # a compressed tarball unpacks to about this many times its size
COMPRESSED = (".gz", ".tgz", ".zst", ".tzst", ".bz2", ".tbz", ".lz4")
STARTED = re.compile(r"Importing images from (\S+?)\"?$")
DONE = re.compile(r"Imported images from (\S+) in ")
FAILED = re.compile(r"(?:Error encountered while importing|Failed to import) (\S+?):? (.*?)\"?$")


def tarball_bytes(root: Root) -> int:
    """The air-gap images' size as K3s will unpack them (compressed files count more)."""
    total = 0
    try:
        entries = list(root(IMAGES_DIR).iterdir())
    except OSError:
        return 0
    for entry in entries:
        try:
            size = entry.stat().st_size if entry.is_file() else 0
        except OSError:
            continue
        total += size * (COMPRESSION if entry.name.lower().endswith(COMPRESSED) else 1)
    return total


def allowance(root: Root) -> float:
    """Seconds to add to the start timeout for importing the air-gap images."""
    return tarball_bytes(root) / IMPORT_RATE


def importing(journal: List[str]) -> Optional[str]:
    """The file K3s is importing now (started, neither done nor failed), or None."""
    current: Optional[str] = None
    for line in journal:
        started, done, failed = STARTED.search(line), DONE.search(line), FAILED.search(line)
        if started:
            current = started.group(1)
        elif (done and done.group(1) == current) or (failed and failed.group(1) == current):
            current = None
    return current


def failure(journal: List[str]) -> Optional[str]:
    """The last import K3s reported as failed: 'file: error'."""
    found = [m for m in map(FAILED.search, journal) if m]
    return found[-1].group(1) + ": " + found[-1].group(2) if found else None


def verdict(root: Root, journal: List[str], timeout: float) -> Optional[str]:
    """The start-timeout verdict when air-gap images are the reason, else None."""
    current = importing(journal)
    if current:
        megabytes = tarball_bytes(root) // (1024 * 1024)
        return (
            "K3s is still importing air-gap images (" + current + ") after " + str(int(timeout))
            + " s, not failing: a slow card (about " + str(megabytes) + " MB to unpack); it "
            "goes on by itself; a faster card or a longer agent.start_timeout avoids this"
        )  # fmt: skip
    failed = failure(journal)
    if failed:
        return "K3s failed to import air-gap images (" + failed + ") and has not joined"
    return None
