"""One image written to many cards at once, read once, and each card read back as it goes.

The reader (the calling thread) reads each mapped range of the image once, in 4 MiB
chunks, hashes it once against the block map, and hands the same chunk to every card's
writer thread through a queue of `DEPTH` chunks.

Each card also has a checker thread that trails its writer: once a stretch of `STRETCH`
bytes is written, the checker flushes the card (fdatasync on its own descriptor), drops
that stretch from the page cache (POSIX_FADV_DONTNEED), reads it back from the card and
compares it, byte for byte, with the very chunks the reader read and checked against the
bmap. So reading back overlaps writing, what is checked is what the card holds (not what
the page cache remembers), and no card is hashed again: one sha256 per round, one memcmp
per card.

Memory is bounded by the queues, never by the image: a chunk lives until every card has
written it and read it back, at most `DEPTH + LAG * STRETCH / CHUNK` chunks, shared
between the cards however many they are.

A card whose write or read-back fails (pulled: EIO, ENODEV; full: ENOSPC; read back
differently: a bad card; no chunk taken for `STALL` seconds: hung) is marked failed with
one line and drops out; the reader stops feeding it and the other cards go on. The cards
of one round go at the pace of the slowest: the reader is never more than `DEPTH` chunks
ahead of any card. An image that differs from its block map fails every card (the image
is wrong, not the cards).
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
DEPTH = 8
STRETCH = 16 * 1024 * 1024  # written bytes the checker takes at once
LAG = 4  # stretches a checker may be behind its writer (their chunks are kept until checked)
STALL = 60  # seconds a card may take to accept one more chunk before it is failed
_END = None

_Item = tuple[int, bytes] | None  # a chunk (its offset, its bytes), or the end


def _span(r: bmap.Range, size: int) -> tuple[int, int]:
    return r.first * bmap.BLOCK, min((r.last + 1) * bmap.BLOCK, size)


@dataclass
class Sink:
    """One card being written and checked: its descriptors, progress, and why it failed."""

    shown: Path  # the name messages use
    fd: int  # open for writing
    where: Path  # where the bytes go, opened again to read them back
    advance: Callable[[int], None] = lambda n: None  # bytes written
    checked: Callable[[int], None] = lambda n: None  # bytes read back and found right
    written: int = 0
    failure: str = ""
    bad_read_back: bool = False
    _queue: queue.Queue[_Item] = field(default_factory=lambda: queue.Queue(DEPTH))
    _stretches: queue.Queue[list[tuple[int, bytes]] | None] = field(
        default_factory=lambda: queue.Queue(LAG)
    )

    def _write_all(self, stop: threading.Event) -> None:
        stretch: list[tuple[int, bytes]] = []  # written, not yet handed to the checker
        held = 0
        ended = False
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    ended = True
                    break
                if self.failure or stop.is_set():
                    continue  # drained, so the reader never blocks on a dead card
                self._write(*item)
                stretch.append(item)
                held += len(item[1])
                if held >= STRETCH:
                    self._stretches.put(stretch)
                    stretch, held = [], 0
            if stretch and not self.failure and not stop.is_set():
                self._stretches.put(stretch)
            if not self.failure and not stop.is_set():
                self._flush(self.fd)
        except OSError as exc:
            self.failure = self.failure or f"{self.shown}: {exc.strerror}"
        finally:
            self._stretches.put(_END)
            while not ended and self._queue.get() is not _END:  # a failed card still drains
                pass

    def _write(self, offset: int, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:  # a short write is continued, never skipped
            if self.failure:  # failed from outside (stalled): its descriptor may be closed
                raise OSError(5, self.failure)
            try:
                done = os.pwrite(self.fd, view, offset)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"write failed at byte {offset}: {exc.strerror} (card removed, full or failing?)",
                ) from None
            if done == 0:
                raise OSError(28, f"write failed at byte {offset}: nothing written (card full?)")
            view, offset = view[done:], offset + done
            self.written += done
        self.advance(len(chunk))

    def _flush(self, fd: int) -> None:
        try:
            os.fdatasync(fd)
        except OSError as exc:
            raise OSError(exc.errno, f"flushing the writes failed: {exc.strerror}") from None

    def _check_all(self, stop: threading.Event) -> None:
        """Read back each written stretch from the card itself and compare it, byte for
        byte, with the chunks the reader read (and checked against the bmap)."""
        try:
            fd = os.open(self.where, os.O_RDONLY)
        except OSError as exc:
            self.failure = self.failure or f"{self.shown}: cannot read back: {exc.strerror}"
            fd = -1
        try:
            while (stretch := self._stretches.get()) is not _END:
                if self.failure or stop.is_set() or fd < 0:
                    continue  # drained, so the writer never blocks on a dead checker
                self._check(fd, stretch)
        except OSError as exc:
            self.failure = self.failure or f"{self.shown}: {exc.strerror}"
        finally:
            if fd >= 0:
                os.close(fd)

    def _check(self, fd: int, stretch: list[tuple[int, bytes]]) -> None:
        self._flush(fd)  # the stretch is on the card before it is dropped from the cache
        start = stretch[0][0]
        end = stretch[-1][0] + len(stretch[-1][1])
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)
        for offset, chunk in stretch:
            try:
                back = os.pread(fd, len(chunk), offset)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"read back failed at byte {offset}: {exc.strerror}"
                ) from None
            if back != chunk:
                self.bad_read_back = True
                first = offset // bmap.BLOCK
                last = (offset + len(chunk) - 1) // bmap.BLOCK
                raise OSError(5, f"blocks {first}-{last} read back differently: bad card?")
            self.checked(len(chunk))


def fan_out(
    image: Path, block_map: bmap.BlockMap, sinks: list[Sink], stop: threading.Event
) -> None:
    """Write `block_map`'s ranges of `image` to every sink and read each back; failures are
    left in `sink.failure`. Raises BuildError when the image does not match its block map."""
    threads = []
    for s in sinks:
        threads.append(threading.Thread(target=s._write_all, args=(stop,), daemon=True))
        threads.append(threading.Thread(target=s._check_all, args=(stop,), daemon=True))
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
            _offer(s, _END, 1 if (stop.is_set() or s.failure) else STALL)
        for s, writer, checker in zip(sinks, threads[::2], threads[1::2], strict=True):
            for t in (writer, checker):  # a card hung in the kernel is left behind, failed
                t.join(None if not (stop.is_set() or s.failure) else 2)


def _offer(sink: Sink, item: _Item, wait: float = 0) -> None:
    """Queue `item` for a live card; one that takes no chunk for `STALL` seconds is failed
    (a hung card must not hold back the others for ever). The end is offered to every card."""
    if sink.failure and item is not _END:
        return
    try:
        sink._queue.put(item, timeout=wait or STALL)
    except queue.Full:
        sink.failure = (
            sink.failure or f"{sink.shown}: stalled: no write finished in {STALL} s (card failing?)"
        )


def _feed(fd: int, image: Path, r: bmap.Range, size: int, sinks: list[Sink]) -> str:
    """Read one range once and queue each chunk to every live sink; its sha256."""
    start, end = _span(r, size)
    digest = hashlib.sha256()
    while start < end:
        chunk = os.pread(fd, min(CHUNK, end - start), start)
        if not chunk:
            raise BuildError(f"{image}: ended early at byte {start} (changed while flashing?)")
        digest.update(chunk)
        for s in sinks:
            _offer(s, (start, chunk))
        start += len(chunk)
    return digest.hexdigest()
