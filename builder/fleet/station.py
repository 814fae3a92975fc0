"""`pifleet flash IMAGE --config fleet.yaml --station`: flash cards as they are pushed in.

pifleet watches for disks (`cards.Watcher`); only a disk that appears after it started is a
candidate, and it must pass every rule a named target passes (whole, removable, USB or
MMC disk, not mounted, not the system disk, big enough). Each gets the next device of the
pool and is written, verified, personalized and flushed in a round of its own (cards pushed
in together share one): "edge-017 done: remove the card". Rounds run side by side.

Ctrl-C (or SIGTERM) stops taking cards and lets the rounds in progress finish; a second
one abandons them at once: a card caught while it was written gets an `interrupted` row,
one caught later gets none, and either way its device stays unflashed in the ledger. The
station also stops by itself once every device of the fleet has a card.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from builder.fleet.board import Board
from builder.fleet.cards import Watcher
from builder.fleet.destination import BlockDestination
from builder.fleet.ledger import Ledger
from builder.fleet.pool import Pool
from builder.fleet.rounds import Card, Context, failed_status, run_round
from builder.outputs import bmap
from builder.util.errors import Terminated, UserError
from builder.util.terminal import inert

if TYPE_CHECKING:
    from builder.config.model import FleetConfig

_BOARD = Board()


def context(
    image: Path,
    block_map: bmap.BlockMap,
    digest: str,
    config: FleetConfig | None,
    ledger: Ledger | None,
    pool: Pool | None,
) -> Context:
    """What every round of this run shares; its events go to the run's board."""
    shown = _BOARD
    return Context(
        image=image,
        block_map=block_map,
        image_sha256=digest,
        config=config,
        ledger=ledger,
        event=shown.event,
        give_back=pool.give_back if pool is not None else (lambda device: None),
        release=pool.release if pool is not None else (lambda device: None),
    )


def _summary(cards: list[Card]) -> int:
    failed = [c for c in cards if c.phase != "done"]
    ok = len(cards) - len(failed)
    if failed:
        print(f"{ok} of {len(cards)} cards flashed; {len(failed)} failed:")
        for c in failed:
            print(inert(f"  {c.name} {c.dest.path}: {c.failure}"))
    else:
        print(f"{ok} of {len(cards)} cards flashed and verified")
    return failed_status(len(failed))


def one_round(ctx: Context, cards: list[Card]) -> int:
    """Several named targets at once; the exit status."""
    board = _BOARD
    for card in cards:
        board.add(card)
    with board.showing():
        run_round(ctx, cards)
    return _summary(cards)


def _admit(card: BlockDestination, size: int, board: Board) -> bool:
    reason = card.refusal(size)
    if reason:
        board.say(f"{card.path}: not written: {reason}")
        return False
    return True


def run(args: argparse.Namespace, ctx: Context, pool: Pool | None) -> int:
    """Watch, flash, repeat; the exit status (10 + N when N cards failed)."""
    if not args.yes:
        _consent(ctx.image)
    board = _BOARD
    block_map = ctx.block_map
    ctx.eject = True
    watcher = Watcher(Path(args.system_root))
    rounds: list[threading.Event] = []  # each set when its round is over
    cards: list[Card] = []
    left = f" ({len(pool)} devices left)" if pool is not None else ""
    with board.showing():
        board.say(f"station: waiting for cards{left}; Ctrl-C stops after the cards in progress")
        try:
            while pool is None or len(pool) or not all(r.is_set() for r in rounds):
                watcher.wait()
                batch = _take(watcher, block_map.size, pool, board)
                if batch:
                    cards += batch
                    for card in batch:
                        board.add(card)
                    over = threading.Event()
                    rounds.append(over)  # before it starts: a Ctrl-C now still waits for it
                    threading.Thread(target=_round, args=(ctx, batch, over), daemon=True).start()
            board.say("station: every device of the fleet has a card")
        except (KeyboardInterrupt, Terminated):
            _drain(rounds, ctx, board)
    return _summary(cards) if cards else 0


def _round(ctx: Context, batch: list[Card], over: threading.Event) -> None:
    """A round in its own thread: what fails is already on its cards' rows and lines."""
    try:
        run_round(ctx, batch)
    except Exception:
        pass
    finally:
        over.set()


def _take(watcher: Watcher, size: int, pool: Pool | None, board: Board) -> list[Card]:
    batch = []
    try:
        found = watcher.new_cards()
    except Exception as exc:  # a disk sysfs could not describe: the station goes on
        board.say(
            f"station: a new disk could not be read ({type(exc).__name__}: {exc}); not written"
        )
        return []
    for disk in found:
        if not _admit(disk, size, board):
            continue
        device = pool.take() if pool is not None else None
        if pool is not None and device is None:
            board.say(
                f"{disk.path}: not written: no device left (every device has a card or one in progress)"
            )
            continue
        batch.append(Card(disk, device))
    return batch


def _drain(rounds: list[threading.Event], ctx: Context, board: Board) -> None:
    """The first Ctrl-C: finish what is in progress; a second: abandon it (each card then
    records `interrupted` within seconds: writers stop at their next chunk)."""
    busy = [r for r in rounds if not r.is_set()]
    board.say(
        f"station: stopping; finishing {len(busy)} round(s) in progress (Ctrl-C again abandons them)"
    )
    try:
        for over in busy:
            over.wait()
    except (KeyboardInterrupt, Terminated):
        ctx.stop.set()
        for over in busy:
            over.wait(5)
        raise


def _consent(image: Path) -> None:
    import sys

    if not sys.stdin.isatty():
        raise UserError("--station: not asking on a non-terminal; pass --yes to confirm")
    answer = input(
        f"Write {image.name} to every removable disk pushed in from now on? "
        "Everything on them will be lost. Type 'yes' to continue: "
    )
    if answer.strip().lower() != "yes":
        raise UserError("--station: not confirmed; nothing was written")
