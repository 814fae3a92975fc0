"""The flash ledger: one row per card a flashing run wrote (or tried to), appended as it ends.

`<output dir>/flash-ledger.csv` by default, or JSON Lines when the file's name ends in
`.jsonl`. The columns (`COLUMNS`, documented in README "Flashing a fleet"):

    device, card, vendor, model, serial, size, image_sha256, started, ended,
    bytes_written, verify, outcome, detail

- One row is one write(2) of one whole line to a file opened O_APPEND, then fsync: a
  power cut loses at most the row being written. A line left without its newline by such a
  cut is dropped when the ledger is read, and cut off before the next row is appended.
- Values from the card (vendor, model, serial: anything a USB device says) are made inert
  (no control characters, one line), and in CSV a value starting with `=`, `+`, `-` or `@`
  is prefixed with `'` so that a spreadsheet shows it instead of running it as a formula.
- A device counts as flashed when it has an `ok` row for the same image sha256: a later
  run skips it, so a station stopped at any moment resumes where it was.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from builder.util.errors import BuildError, UserError
from builder.util.terminal import inert

NAME = "flash-ledger.csv"
NAMES = (NAME, "flash-ledger.jsonl")  # what `pifleet status` looks for in the output dir
OK = "ok"
_FORMULA = ("=", "+", "-", "@")


@dataclass(frozen=True)
class Row:
    device: str  # the fleet device the card was personalized as ("" without --config)
    card: str  # the target as given: /dev/sdb, or a file
    vendor: str
    model: str
    serial: str
    size: int  # the card's size in bytes (a file target: 0)
    image_sha256: str
    started: str  # ISO 8601, UTC, seconds
    ended: str
    bytes_written: int
    verify: str  # ok, failed, or "not run"
    outcome: str  # ok, failed, interrupted
    detail: str = ""  # why it failed, in one line


COLUMNS = tuple(f.name for f in fields(Row))


def _cell(value: str) -> str:
    """A CSV value a spreadsheet shows as text (never as a formula)."""
    return f"'{value}" if value.startswith(_FORMULA) else value


def _encode(row: Row, jsonl: bool) -> str:
    values = {k: (inert(v) if isinstance(v, str) else v) for k, v in asdict(row).items()}
    if jsonl:
        return json.dumps(values, ensure_ascii=True) + "\n"
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(
        _cell(v) if isinstance(v, str) else v for v in values.values()
    )
    return out.getvalue()


class Ledger:
    """Rows read and appended; one instance is safe to share between threads, and an
    exclusive flock keeps two stations appending to one ledger from interleaving."""

    def __init__(self, path: Path) -> None:
        if path.suffix not in (".csv", ".jsonl"):
            raise UserError(f"{path}: a ledger is a .csv or a .jsonl file")
        if path.is_dir():
            raise UserError(f"{path}: is a directory; give the ledger's file name")
        self.path = path
        self.jsonl = path.suffix == ".jsonl"
        self._lock = threading.Lock()

    def rows(self) -> list[Row]:
        """Every complete row; a torn last line (a power cut mid-append) is not a row."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise UserError(f"{self.path}: cannot read the ledger: {exc.strerror}") from None
        lines = text.split("\n")[:-1]  # the part after the last newline is torn or empty
        if self.jsonl:
            return [self._from_json(n, line) for n, line in enumerate(lines, 1) if line]
        return [self._from_csv(n, v) for n, v in enumerate(csv.reader(lines), 1) if n > 1 and v]

    def _from_json(self, number: int, line: str) -> Row:
        try:
            data = json.loads(line)
            return Row(**{k: data[k] for k in COLUMNS})
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{self.path}:{number}: not a ledger row") from None

    def _from_csv(self, number: int, values: list[str]) -> Row:
        if len(values) != len(COLUMNS):
            raise UserError(f"{self.path}:{number}: not a ledger row ({len(values)} columns)")
        data: dict[str, object] = dict(zip(COLUMNS, values, strict=True))
        try:
            data["size"] = int(values[COLUMNS.index("size")] or 0)
            data["bytes_written"] = int(values[COLUMNS.index("bytes_written")] or 0)
        except ValueError:
            raise UserError(
                f"{self.path}:{number}: not a ledger row (a count is not a number)"
            ) from None
        return Row(**data)  # type: ignore[arg-type]

    def flashed(self, image_sha256: str) -> set[str]:
        """Devices with an `ok` row for this image."""
        return {r.device for r in self.rows() if r.outcome == OK and r.image_sha256 == image_sha256}

    def append(self, row: Row) -> None:
        """One whole line, fsynced; a new ledger starts with its header (CSV) in the same write."""
        line = _encode(row, self.jsonl)
        with self._lock, self._opened() as fd:
            end = os.lseek(fd, 0, os.SEEK_END)
            if end and os.pread(fd, 1, end - 1) != b"\n":
                end = _cut_torn_tail(fd, end)
            if end == 0 and not self.jsonl:
                line = ",".join(COLUMNS) + "\n" + line
            try:
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            except OSError as exc:
                raise BuildError(
                    f"{self.path}: cannot append to the ledger: {exc.strerror}"
                ) from None

    @contextlib.contextmanager
    def _opened(self) -> Iterator[int]:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise UserError(f"{self.path}: cannot open the ledger: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)


def _cut_torn_tail(fd: int, end: int) -> int:
    """Truncate after the last newline: what follows it is a row a power cut tore."""
    keep = end
    while keep > 0:
        start = max(0, keep - 65536)
        block = os.pread(fd, keep - start, start)
        at = block.rfind(b"\n")
        if at >= 0:
            keep = start + at + 1
            break
        keep = start
    os.ftruncate(fd, keep)
    return keep


def find(folder: Path) -> Ledger | None:
    """The ledger in an output folder, if a flashing run wrote one."""
    for name in NAMES:
        if (folder / name).is_file():
            return Ledger(folder / name)
    return None


def cards_by_device(folder: Path) -> dict[str, Row]:
    """Each device's latest `ok` row (the card it now runs from); {} without a ledger."""
    ledger = find(folder)
    if ledger is None:
        return {}
    with contextlib.suppress(UserError):
        return {r.device: r for r in ledger.rows() if r.outcome == OK and r.device}
    return {}
