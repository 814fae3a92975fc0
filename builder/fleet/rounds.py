"""One round of a flashing station: the cards that start together, written from one read of
the image and read back as they are written (`fanout`), then each personalized, flushed
and recorded on its own.

A card that fails at any phase fails alone: its ledger row says why, its device goes back
to the pool, a file target's temporary copy is removed, and the other cards go on. A card
is recorded `ok` only after its read-back verify and its personalization were flushed to it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from builder.fleet.destination import BlockDestination, Destination
from builder.fleet.fanout import Sink, fan_out
from builder.fleet.flash import personalize_card
from builder.fleet.ledger import OK, Ledger, Row
from builder.outputs import bmap
from builder.util.atomic import reported_as
from builder.util.errors import PifleetError

if TYPE_CHECKING:
    from builder.config.model import Device, FleetConfig


FAILED_BASE = 10  # a run of several cards exits 10 + N when N of them failed


def failed_status(failed: int) -> int:
    return 0 if failed == 0 else FAILED_BASE + min(failed, 100)


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Card:
    """One target of a round, and how far it got (what the live table shows)."""

    dest: Destination
    device: Device | None
    image_sha256: str = ""
    phase: str = "waiting"  # write, verify, personalize, done, failed
    done: int = 0  # bytes written
    checked: int = 0  # bytes read back from the card and found right
    total: int = 0  # bytes to write (and to read back)
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=now_iso)
    written: int = 0
    verify: str = "not run"
    failure: str = ""

    @property
    def name(self) -> str:
        return self.device.hostname if self.device is not None else str(self.dest.path)

    @property
    def shown_phase(self) -> str:
        """write until every byte is written, then verify until every byte is read back."""
        if self.phase == "write" and self.total and self.done >= self.total:
            return "verify"
        return self.phase

    def rate(self) -> float:
        """MB/s written so far."""
        return self.done / max(time.monotonic() - self.started, 1e-3) / 1e6


@dataclass
class Context:
    """What every round of one run shares."""

    image: Path
    block_map: bmap.BlockMap
    image_sha256: str
    config: FleetConfig | None
    ledger: Ledger | None
    event: Callable[[Card, str], None]
    give_back: Callable[[Device], None]  # its card failed: the device is free again
    release: Callable[[Device], None]  # its card is recorded: the claim goes
    stop: threading.Event = field(default_factory=threading.Event)
    personalizing: threading.Lock = field(default_factory=threading.Lock)  # known_hosts
    eject: bool = False


def run_round(ctx: Context, cards: list[Card]) -> list[Card]:
    """Write, verify, personalize and record every card; the cards, each ok or failed."""
    mapped = ctx.block_map.mapped_blocks * bmap.BLOCK
    stacks = {id(c): contextlib.ExitStack() for c in cards}
    sinks: list[tuple[Card, Sink, Path]] = []
    for card in cards:
        try:
            where = stacks[id(card)].enter_context(card.dest.prepared())
            fd = card.dest.open_for_writing(where, ctx.block_map.size)
            # Held (O_EXCL on a disk) until the card is done: nothing mounts it meanwhile, as
            # an automounter would once udev sees the written partition table.
            stacks[id(card)].callback(os.close, fd)
        except PifleetError as exc:
            _failed(ctx, card, stacks[id(card)], str(exc))
            continue
        card.phase, card.total, card.started = "write", mapped, time.monotonic()
        sink = Sink(card.dest.path, fd, where, _advancer(card), _checker(card))
        sinks.append((card, sink, where))
        ctx.event(card, f"writing {card.dest.summary()}")
    try:
        fan_out(ctx.image, ctx.block_map, [s for _, s, _ in sinks], ctx.stop)
    except BaseException as exc:
        outcome = "failed" if isinstance(exc, PifleetError) else "interrupted"
        for card, sink, _ in sinks:
            card.written = sink.written
            _failed(ctx, card, stacks[id(card)], str(exc) or "interrupted", outcome)
        raise
    finishing = []
    for card, sink, where in sinks:
        card.written = sink.written
        card.verify = "failed" if sink.bad_read_back else (OK if not sink.failure else "not run")
        if sink.failure or ctx.stop.is_set():
            outcome = "failed" if sink.failure else "interrupted"
            _failed(ctx, card, stacks[id(card)], sink.failure or "interrupted", outcome)
            continue
        finished = threading.Event()
        finishing.append(finished)
        threading.Thread(
            target=_finish, args=(ctx, card, where, stacks[id(card)], finished), daemon=True
        ).start()
    _wait_all(ctx, finishing)
    return cards


def _wait_all(ctx: Context, finishing: list[threading.Event]) -> None:
    """Until every card is finished; interrupted, the cards not yet being personalized are
    recorded `interrupted`, and those being personalized get a few seconds to finish."""
    try:
        for finished in finishing:
            finished.wait()  # an Event, not Thread.join: a Ctrl-C cannot make it lie
    except BaseException:
        ctx.stop.set()
        for finished in finishing:
            finished.wait(10)
        raise


def _advancer(card: Card) -> Callable[[int], None]:
    def advance(n: int) -> None:
        card.done += n

    return advance


def _checker(card: Card) -> Callable[[int], None]:
    def checked(n: int) -> None:
        card.checked += n

    return checked


def _finish(
    ctx: Context, card: Card, where: Path, stack: contextlib.ExitStack, finished: threading.Event
) -> None:
    try:
        _personalize_and_record(ctx, card, where, stack)
    finally:
        finished.set()


def _personalize_and_record(
    ctx: Context, card: Card, where: Path, stack: contextlib.ExitStack
) -> None:
    """Personalize, flush, then the file target appears and the row is written."""
    if ctx.stop.is_set():
        _failed(ctx, card, stack, "interrupted before it was personalized", "interrupted")
        return
    try:
        if ctx.config is not None and card.device is not None:
            card.phase = "personalize"
            with reported_as(where, card.dest.path):
                personalize_card(
                    ctx.config, card.device, where, ctx.image_sha256, ctx.personalizing
                )
        _flush(where, card.dest.path)
        stack.close()  # a file target is renamed into place here
    except PifleetError as exc:
        _failed(ctx, card, stack, str(exc))
        return
    except BaseException as exc:  # a bug: still this card only, still one line
        _failed(ctx, card, stack, f"internal error: {type(exc).__name__}: {exc}")
        return
    recorded = _record(ctx, card, OK)
    if card.device is not None:
        ctx.release(card.device)
    if not recorded:
        card.phase = "failed"
        card.failure = f"written and verified, but not recorded in the ledger: {card.failure}"
        return
    card.phase = "done"
    if not isinstance(card.dest, BlockDestination):
        ctx.event(card, "done")
        return
    ejected = _eject(card.dest) if ctx.eject else False
    ctx.event(card, "done: remove the card" + (" (ejected)" if ejected else ""))


def _flush(where: Path, shown: Path) -> None:
    from builder.util.errors import BuildError

    try:
        fd = os.open(where, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise BuildError(f"{shown}: flushing the card failed: {exc.strerror}") from None


def _failed(
    ctx: Context, card: Card, stack: contextlib.ExitStack, why: str, outcome: str = "failed"
) -> None:
    """This card only: its temporary file goes, its row says why, its device is free again."""
    card.phase, card.failure = "failed", why
    with contextlib.suppress(Exception):
        try:
            raise _CardFailed(why)
        except _CardFailed:
            stack.__exit__(*sys.exc_info())
    _record(ctx, card, outcome)
    if card.device is not None:
        ctx.give_back(card.device)
    ctx.event(card, f"failed: {why}")


class _CardFailed(Exception):
    """Thrown into a card's prepared() so that a file target's temporary copy is removed."""


def _record(ctx: Context, card: Card, outcome: str) -> bool:
    """The card's row; False (and a line) when the ledger would not take it."""
    if ctx.ledger is None:
        return True
    card.image_sha256 = ctx.image_sha256
    try:
        record(ctx.ledger, card, outcome)
    except PifleetError as exc:
        card.failure = card.failure or str(exc)
        ctx.event(card, f"not recorded: {exc}")
        return False
    return True


def record(ledger: Ledger, card: Card, outcome: str) -> None:
    """The card's ledger row, appended now (its end time)."""
    dest = card.dest
    block = dest if isinstance(dest, BlockDestination) else None
    ledger.append(
        Row(
            device=card.device.hostname if card.device is not None else "",
            card=str(dest.path),
            vendor=block.vendor if block else "",
            model=block.model if block else "",
            serial=block.serial if block else "",
            size=block.size if block else 0,
            image_sha256=card.image_sha256,
            started=card.started_at,
            ended=now_iso(),
            bytes_written=card.written,
            verify=card.verify,
            outcome=outcome,
            detail=card.failure,
        )
    )


def _eject(dest: Destination) -> bool:
    """Ask the kernel to eject a card (SCSI START STOP UNIT via eject(1)); False where it cannot."""
    tool = shutil.which("eject")
    if not isinstance(dest, BlockDestination) or tool is None or not dest.path.is_block_device():
        return False
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run([tool, str(dest.path)], capture_output=True, timeout=20)
        return done.returncode == 0
    return False
