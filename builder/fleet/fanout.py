"""One image written to many cards at once, read once: the flashing station's write phase.

The reader (the calling thread) reads each mapped range of the image once, in 4 MiB
chunks, hashes it once against the block map, and hands the same chunk to every card's
writer thread through a queue of `DEPTH` chunks. Memory is bounded by the queues, never
by the image: at most `DEPTH + 1` chunks are alive, however many cards are written.

A card whose write fails (pulled: EIO, ENODEV; full: ENOSPC) is marked failed with one
line and drops out; the reader stops feeding it and the other cards go on. An image that
differs from its block map fails every card (the image is wrong, not the cards).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builder.outputs import bmap
from builder.util.errors import BuildError

CHUNK = 4 * 1024 * 1024
DEPTH = 4
_END = None


@dataclass
class Sink:
    """One card being written: its descriptor, what was written, and why it failed."""

    shown: Path  # the name messages use
    fd: int
    advance: Callable[[int], None] = lambda n: None
    written: int = 0
    failure: str = ""
    _queue: queue.Queue[tuple[int, bytes] | None] = field(
        default_factory=lambda: queue.Queue(DEPTH)
    )

    def _run(self, stop: threading.Event) -> None:
        while (item := self._queue.get()) is not _END:
            if self.failure or stop.is_set():
                continue  # drained, so the reader never blocks on a dead card
            offset, chunk = item
            try:
                self._write(offset, chunk)
            except OSError as exc:
                self.failure = f"{self.shown}: write failed at byte {offset}: {exc.strerror} (card removed, full or failing?)"
        if not self.failure and not stop.is_set():
            try:
                os.fsync(self.fd)
            except OSError as exc:
                self.failure = f"{self.shown}: flushing the writes failed: {exc.strerror}"

    def _write(self, offset: int, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:  # a short write is continued, never skipped
            done = os.pwrite(self.fd, view, offset)
            if done == 0:
                raise OSError(28, os.strerror(28))
            view, offset = view[done:], offset + done
            self.written += done
        self.advance(len(chunk))


def fan_out(
    image: Path, block_map: bmap.BlockMap, sinks: list[Sink], stop: threading.Event
) -> None:
    """Write `block_map`'s ranges of `image` to every sink; failures are left in
    `sink.failure`. Raises BuildError when the image itself does not match its block map."""
    threads = [threading.Thread(target=s._run, args=(stop,), daemon=True) for s in sinks]
    for t in threads:
        t.start()
    try:
        with open(image, "rb") as src:
            for r in block_map.ranges:
                if stop.is_set() or all(s.failure for s in sinks):
                    break
                digest = _feed(src.fileno(), image, r, block_map.size, sinks)
                if r.sha256 and digest != r.sha256:
                    raise BuildError(
                        f"{image}: blocks {r.first}-{r.last} differ from its bmap (image changed "
                        "after the bmap was made?); flashing stopped"
                    )
    except BaseException:
        stop.set()
        raise
    finally:
        for s in sinks:
            s._queue.put(_END)
        for t in threads:
            t.join()


def _feed(fd: int, image: Path, r: bmap.Range, size: int, sinks: list[Sink]) -> str:
    """Read one range once and queue each chunk to every live sink; its sha256."""
    start, end = r.first * bmap.BLOCK, min((r.last + 1) * bmap.BLOCK, size)
    digest = hashlib.sha256()
    while start < end:
        chunk = os.pread(fd, min(CHUNK, end - start), start)
        if not chunk:
            raise BuildError(f"{image}: ended early at byte {start} (changed while flashing?)")
        digest.update(chunk)
        for s in sinks:
            if not s.failure:
                s._queue.put((start, chunk))
        start += len(chunk)
    return digest.hexdigest()
