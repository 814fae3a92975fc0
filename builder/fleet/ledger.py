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
import errno
import fcntl
import io
import json
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from builder.util.errors import BuildError, UserError
from builder.util.terminal import inert

NAME = "flash-ledger.csv"
NAMES = (NAME, "flash-ledger.jsonl")  # what `pifleet status` looks for in the output dir
OK = "ok"
MAX_BYTES = 64 << 20  # a ledger of a million cards is about 300 MiB; this is 200,000
_FORMULA = ("=", "+", "-", "@")
_COUNTS = ("size", "bytes_written")


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


def _uncell(value: str) -> str:
    """What `_cell` was given."""
    return value[1:] if value.startswith("'") and value[1:].startswith(_FORMULA) else value


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
    exclusive flock keeps two runs appending to one ledger from interleaving.

    The ledger is a regular file opened without following a symlink, for reading as for
    appending (a FIFO, a device or a link is refused in one line), read up to `MAX_BYTES`;
    a CSV ledger starts with its header line, or it is not a pifleet ledger.
    """

    def __init__(self, path: Path) -> None:
        if path.suffix not in (".csv", ".jsonl"):
            raise UserError(f"{path}: a ledger is a .csv or a .jsonl file")
        if path.is_dir():
            raise UserError(f"{path}: is a directory; give the ledger's file name")
        self.path = path
        self.jsonl = path.suffix == ".jsonl"
        self._lock = threading.Lock()

    def check(self) -> None:
        """Before any card is written: the ledger can be read, and appended to (made if new)."""
        self.rows()
        with self._opened(os.O_RDWR | os.O_APPEND | os.O_CREAT, UserError):
            pass

    def rows(self) -> list[Row]:
        """Every complete row; a torn last line (a power cut mid-append) is not a row."""
        if not os.path.lexists(self.path):
            return []
        with self._opened(os.O_RDONLY, UserError) as fd:
            data = os.read(fd, MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise UserError(f"{self.path}: over {MAX_BYTES >> 20} MiB: not a flash ledger")
        lines = data.decode("utf-8", errors="replace").split("\n")[:-1]  # the rest is torn
        if self.jsonl:
            return [self._from_json(n, line) for n, line in enumerate(lines, 1) if line]
        if lines and lines[0] != ",".join(COLUMNS):
            raise UserError(f"{self.path}:1: not a pifleet flash ledger (no header line)")
        try:
            return [self._from_csv(n, v) for n, v in enumerate(csv.reader(lines), 1) if n > 1 and v]
        except csv.Error as exc:
            raise UserError(f"{self.path}: not a ledger ({exc})") from None

    def _from_json(self, number: int, line: str) -> Row:
        try:
            data = json.loads(line)
            row = Row(**{k: data[k] for k in COLUMNS})
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{self.path}:{number}: not a ledger row") from None
        if not all(isinstance(getattr(row, k), int if k in _COUNTS else str) for k in COLUMNS):
            raise UserError(f"{self.path}:{number}: not a ledger row (a value of the wrong type)")
        return row

    def _from_csv(self, number: int, values: list[str]) -> Row:
        if len(values) != len(COLUMNS):
            raise UserError(f"{self.path}:{number}: not a ledger row ({len(values)} columns)")
        data: dict[str, object] = {k: _uncell(v) for k, v in zip(COLUMNS, values, strict=True)}
        try:
            for key in _COUNTS:
                data[key] = int(values[COLUMNS.index(key)] or 0)
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
        with self._lock, self._opened(os.O_RDWR | os.O_APPEND | os.O_CREAT, BuildError) as fd:
            fcntl.flock(fd, fcntl.LOCK_EX)
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
    def _opened(self, flags: int, error: type[UserError] | type[BuildError]) -> Iterator[int]:
        try:
            fd = os.open(self.path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            why = "a symlink" if exc.errno == errno.ELOOP else exc.strerror
            raise error(f"{self.path}: cannot open the ledger: {why}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise error(f"{self.path}: not a regular file; a ledger is a plain file")
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
