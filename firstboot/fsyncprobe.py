"""How fast a server's disk makes etcd's log durable: fsync latency on the K3s data directory,
measured once before K3s starts, as etcd's guidance measures it.

etcd writes every Raft entry to its write-ahead log and fdatasyncs it before it answers; on a
slow card the leader's heartbeats go out late and the cluster elects again and again. The agent
measures what etcd will see and says so; it never blocks or fails the join (a warning at most).
Agents run no etcd and measure nothing.

| rule | source |
|---|---|
| the 99th percentile of WAL fsync (`etcd_disk_wal_fsync_duration_seconds`) should stay under 10 ms; a slower disk delays the leader's heartbeats (spurious elections) | etcd docs, FAQ, "What does the etcd warning 'failed to send out heartbeat on time' mean?" (etcd.io/docs/v3.5/faq/) |
| a disk whose writes take too long lets heartbeats time out and triggers elections; measure it with fio, back etcd with an SSD | etcd docs, "Hardware recommendations", Disks (etcd.io/docs/v3.5/op-guide/hardware/) |
| the leader's disk counts against the 100 ms heartbeat interval and the 1000 ms election timeout | etcd docs, "Tuning", Time parameters (etcd.io/docs/v3.5/tuning/) |
| the measurement: sequential writes of 2300 bytes, fdatasync after each, p99 of the syncs (fio --rw=write --ioengine=sync --fdatasync=1 --bs=2300) | the fio example etcd's hardware page links to (IBM Cloud blog, "Using fio to tell whether your storage is fast enough for etcd", 2019) |
| on a Raspberry Pi a server wants an external SSD: etcd is write intensive and SD cards and eMMC cannot keep up | k3s-io/docs docs/installation/requirements.md, Hardware, Disks |

Bounded: at most WRITES writes (about 690 kB) and about BUDGET seconds, in one file created
0600 in the data directory (or its nearest existing parent before K3s made it) and removed
after, a leftover of a power cut included.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

from firstboot.paths import Root

# The K3s data directory of a server and the parents that exist before K3s first runs.
DATA_DIRS = (
    "/var/lib/rancher/k3s/server/db",
    "/var/lib/rancher/k3s/server",
    "/var/lib/rancher/k3s",
    "/var/lib/rancher",
    "/var/lib",
)
PROBE_NAME = ".pifleet-fsync-probe"
BLOCK = 2300  # bytes per write, as etcd's fio example
WRITES = 300
BUDGET = 5.0  # seconds
LIMIT_MS = 10.0  # etcd's p99 for WAL fsync
PREFIX = "fsync: "  # the agent's progress line; the card keeps it under "fsync"

Sync = Callable[[int], None]


@dataclass
class Measure:
    directory: str  # the device path measured
    writes: int
    p50_ms: float
    p99_ms: float

    @property
    def slow(self) -> bool:
        return self.p99_ms > LIMIT_MS


def data_dir(root: Root) -> str:
    """The deepest of DATA_DIRS that exists on the device (K3s makes db/ when it first runs)."""
    return next((d for d in DATA_DIRS if root(d).is_dir()), DATA_DIRS[-1])


def percentile(samples: List[float], q: float) -> float:
    """The nearest-rank `q` percentile (0 < q <= 1) of `samples` (not empty)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def measure(
    directory: str,
    host: str,
    sync: Sync = os.fdatasync,
    writes: int = WRITES,
    budget: float = BUDGET,
    clock: Callable[[], float] = time.monotonic,
) -> Measure:
    """Append `writes` blocks of BLOCK bytes to a new 0600 file in `host` (the device's
    `directory`), `sync` after each, and time the syncs; stop early once `budget` seconds
    have passed (one write at least). The file is removed whatever happens."""
    path = os.path.join(host, PROBE_NAME)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a power cut's leftover
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    samples: List[float] = []
    try:
        block, deadline = os.urandom(BLOCK), clock() + budget
        while len(samples) < writes and (not samples or clock() < deadline):
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view) :]
            started = clock()
            sync(fd)
            samples.append((clock() - started) * 1000.0)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return Measure(directory, len(samples), percentile(samples, 0.5), percentile(samples, 0.99))


def line(found: Measure) -> str:
    """The agent's one line about the measurement (PREFIX, then what diagnose shows)."""
    return (
        PREFIX
        + f"p99 {found.p99_ms:.1f} ms, p50 {found.p50_ms:.1f} ms over {found.writes} writes of "
        + f"{BLOCK} bytes with fdatasync on {found.directory} (etcd wants p99 under "
        + f"{LIMIT_MS:.0f} ms)"
    )


def warning(found: Measure) -> Optional[str]:
    """The risk and the remedy when the p99 is over etcd's limit, else None."""
    if not found.slow:
        return None
    return (
        f"fsync p99 {found.p99_ms:.1f} ms on {found.directory} is over etcd's {LIMIT_MS:.0f} ms "
        "(a slow SD card?): etcd on this server risks missed heartbeats, leader elections and "
        "request timeouts; boot this server from an SSD or USB disk (or mount one at "
        "/var/lib/rancher), or make this Pi an agent (role: agent)"
    )


def tell(
    root: Root,
    progress: Callable[[str], None],
    warn: Callable[[str], None],
    sync: Sync = os.fdatasync,
    writes: int = WRITES,
    budget: float = BUDGET,
) -> Optional[Measure]:
    """Measure a server's data directory and say so: one progress line, and a warning when it
    is slow. A disk that cannot be measured (read-only, full) is a line too, never a failure."""
    directory = data_dir(root)
    try:
        found = measure(directory, str(root(directory)), sync, writes, budget)
    except OSError as exc:
        progress(PREFIX + "not measured on " + directory + ": " + (exc.strerror or str(exc)))
        return None
    progress(line(found))
    advice = warning(found)
    if advice:
        warn(advice)
    return found
