"""The flash ledger (issue 25): one whole line per card, a torn line (a power cut) never
read as a row and cut off before the next, values from a hostile card inert, CSV cells a
spreadsheet shows as text, and threads appending at once never interleaving."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import pytest

from builder.fleet.ledger import COLUMNS, Ledger, Row, cards_by_device
from builder.util.errors import UserError


def row(device: str, serial: str = "S1", outcome: str = "ok", sha: str = "a" * 64) -> Row:
    return Row(device, "/dev/sdb", "Generic", "STORAGE", serial, 64 << 30, sha,
               "2026-12-02T00:00:00Z", "2026-12-02T00:01:00Z", 7 << 20, "ok", outcome)  # fmt: skip


@pytest.mark.parametrize("name", ["flash-ledger.csv", "flash-ledger.jsonl"])
def test_rows_read_back_as_written(tmp_path: Path, name: str) -> None:
    ledger = Ledger(tmp_path / name)
    written = [row("edge-001"), row("edge-002", outcome="failed"), row("edge-003", sha="b" * 64)]
    for r in written:
        ledger.append(r)
    assert ledger.rows() == written
    assert ledger.flashed("a" * 64) == {"edge-001"}
    assert cards_by_device(tmp_path)["edge-003"].serial == "S1"
    if name.endswith(".csv"):
        assert (tmp_path / name).read_text().splitlines()[0] == ",".join(COLUMNS)


@pytest.mark.parametrize("name", ["flash-ledger.csv", "flash-ledger.jsonl"])
def test_a_torn_last_line_is_no_row_and_is_cut_before_the_next(tmp_path: Path, name: str) -> None:
    ledger = Ledger(tmp_path / name)
    ledger.append(row("edge-001"))
    whole = (tmp_path / name).read_bytes()
    with open(tmp_path / name, "ab") as f:  # a power cut in the middle of the next row
        f.write(whole.splitlines(keepends=True)[-1][:17])
    assert [r.device for r in ledger.rows()] == ["edge-001"]
    ledger.append(row("edge-002"))
    assert [r.device for r in ledger.rows()] == ["edge-001", "edge-002"]
    assert (tmp_path / name).read_bytes().startswith(whole)


def test_a_torn_header_is_cut_and_written_again(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("device,ca")
    Ledger(tmp_path / "l.csv").append(row("edge-001"))
    assert (tmp_path / "l.csv").read_text().splitlines()[0] == ",".join(COLUMNS)


def test_a_hostile_card_cannot_reach_a_terminal_or_a_spreadsheet(tmp_path: Path) -> None:
    serial = '=HYPERLINK("http://127.0.0.1:9/x","ok")\x1b]0;owned\x07\nforged,row'
    ledger = Ledger(tmp_path / "l.csv")
    ledger.append(row("edge-001", serial=serial))
    text = (tmp_path / "l.csv").read_text()
    assert "\x1b" not in text and "\x07" not in text
    assert len(text.splitlines()) == 2, "a newline in a value made a second row"
    [cells] = list(csv.DictReader(text.splitlines()))
    assert cells["serial"].startswith("'="), "a formula a spreadsheet would run"
    assert ledger.rows()[0].serial.startswith('=HYPERLINK("http'), "read back as it was"
    jsonl = Ledger(tmp_path / "l.jsonl")
    jsonl.append(row("edge-001", serial=serial))
    line = (tmp_path / "l.jsonl").read_text()
    assert "\x1b" not in line and "\\\\x1b" in line and len(line.splitlines()) == 1
    assert json.loads(line)["serial"].startswith("=HYPERLINK")  # JSON is not a spreadsheet


def test_a_broken_row_in_the_middle_is_one_line(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.csv")
    ledger.append(row("edge-001"))
    with open(tmp_path / "l.csv", "a") as f:
        f.write("not,a,row\n")
    ledger.append(row("edge-002"))
    with pytest.raises(UserError, match=r"l\.csv:3: not a ledger row \(3 columns\)"):
        ledger.rows()


def test_threads_appending_at_once_never_interleave(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.csv")
    others = Ledger(tmp_path / "l.csv")  # a second station on the same file

    def append(which: Ledger, n: int) -> None:
        for i in range(40):
            which.append(row(f"edge-{n}-{i}", serial="x" * 3000))

    threads = [
        threading.Thread(target=append, args=(w, n)) for n, w in enumerate([ledger, others] * 3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ledger.rows()) == 240 and all(r.serial == "x" * 3000 for r in ledger.rows())
