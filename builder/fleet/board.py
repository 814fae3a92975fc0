"""What a flashing run shows: a live table on a terminal, one line per event elsewhere.

The table has one row per card: the device it becomes, the card (name, model, serial), the
phase (write, verify, personalize, done, failed), MB/s and a progress bar. Off a terminal
(CI, a log file, `--quiet` aside) each event is one line: `edge-017 /dev/sdb: done: remove
the card`. Everything a card says about itself is shown inert (`util.terminal`).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

from builder.fleet.destination import BlockDestination
from builder.fleet.rounds import Card
from builder.util.terminal import inert

_BAR = 20


def _bar(card: Card) -> str:
    """Writing fills the first half, reading back the second."""
    if card.phase in ("done", "failed") or not card.total:
        return ""
    part = (card.done + card.checked) / (2 * card.total)
    filled = min(_BAR, int(_BAR * part))
    return "#" * filled + "-" * (_BAR - filled) + f" {int(100 * part):3d}%"


def _card_facts(card: Card) -> str:
    dest = card.dest
    if isinstance(dest, BlockDestination):
        facts = " ".join(filter(None, [dest.label, dest.serial and f"serial {dest.serial}"]))
        return f"{dest.path} {facts}".strip()
    return str(dest.path)


def _cell(text: str) -> str:
    """A table cell: inert, and its brackets escaped so that rich reads no markup in it."""
    from rich.markup import escape

    return escape(inert(text))


class Board:
    """Thread-safe: rounds report from their own threads."""

    def __init__(self, live: bool | None = None) -> None:
        self.live = sys.stdout.isatty() if live is None else live
        self.cards: list[Card] = []
        self._lock = threading.Lock()
        self._console: Any = None

    def add(self, card: Card) -> None:
        with self._lock:
            self.cards.append(card)

    def say(self, text: str) -> None:
        """A line about the run, not about one card: inert (a card's name or serial cannot
        reach the terminal as codes, nor split the line), and never read as markup."""
        with self._lock:
            if self._console is not None:
                self._console.print(inert(text), markup=False, highlight=False)
            else:
                print(inert(text), flush=True)

    def event(self, card: Card, text: str) -> None:
        self.say(f"{card.name} {card.dest.path}: {text}")

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(expand=False)
        for column in ("device", "card", "phase", "MB/s", "progress"):
            table.add_column(column)
        with self._lock:
            cards = list(self.cards)
        for c in cards:
            rate = f"{c.rate():.1f}" if c.phase == "write" else ""
            table.add_row(_cell(c.name), _cell(_card_facts(c)), c.shown_phase, rate, _bar(c))
        return table

    @contextlib.contextmanager
    def showing(self) -> Iterator[Board]:
        """The live table for the duration (on a terminal); plain lines otherwise."""
        if not self.live:
            yield self
            return
        from rich.console import Console
        from rich.live import Live

        console = Console()
        with Live(console=console, get_renderable=self._table, refresh_per_second=4):
            self._console = console
            try:
                yield self
            finally:
                self._console = None
