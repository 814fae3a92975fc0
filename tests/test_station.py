"""`pifleet flash --station` (issue 25): cards pushed in while it runs become the fleet's
devices one after another; what was there before it started is never written.

The station runs for real in a subprocess, over a fabricated sysfs (`fake_sysfs`) whose
disks' /dev nodes are regular files as big as their cards; a thread of the test pushes
cards into readers and plugs in new readers while it runs, as a person at a hub would.
"""

from __future__ import annotations

import csv
import signal
import threading
import time
from pathlib import Path

from builder.fleet.ledger import Ledger, Row
from tests.fake_sysfs import FakeSystem, pull_card, push_card, usb_reader
from tests.image_read import sha256
from tests.station_helpers import (
    GOLDEN,
    SECTORS,
    Station,
    fleet_copy,
    four_devices,
    hostname_of,
    running,
)

__all__ = ["fleet_copy", "four_devices"]  # the fixtures this module's tests take


def rows(fleet_copy: Path) -> list[dict[str, str]]:
    with open(fleet_copy / "out/flash-ledger.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_cards_pushed_in_become_the_next_devices_and_present_disks_are_left_alone(
    fleet_copy: Path, tmp_path: Path
) -> None:
    system = FakeSystem(tmp_path / "root")
    present = usb_reader(system, 0, SECTORS, serial="WAS-HERE")  # a card in before the start
    usb_reader(system, 1)  # an empty reader
    system.done()
    before = sha256(present)
    with running(fleet_copy, system.root) as station:
        push_card(system, "sdc", SECTORS, "CARD-A")
        first = station.wait_for(r"edge-001 .*done: remove the card")
        assert "/dev/sdc" in first
        # the next card in the same reader, and a new reader plugged in holding a card
        pull_card(system, "sdc")
        pushed = threading.Thread(target=lambda: (
            push_card(system, "sdc", SECTORS, "CARD-B"), usb_reader(system, 2, SECTORS, "CARD-C")
        ))  # fmt: skip
        pushed.start()
        pushed.join()
        station.wait_for(r"edge-00[23] .*done: remove the card")
        station.wait_for(r"edge-00[23] .*done: remove the card")
        code = station.stop(signal.SIGINT)
    assert code == 0, station.output()
    assert sha256(present) == before, "a disk present before the station started was written"
    recorded = {r["serial"]: r for r in rows(fleet_copy)}
    assert set(recorded) == {"CARD-A", "CARD-B", "CARD-C"}
    assert recorded["CARD-A"]["device"] == "edge-001"
    assert {recorded["CARD-B"]["device"], recorded["CARD-C"]["device"]} == {"edge-002", "edge-003"}
    for r in recorded.values():
        assert r["outcome"] == "ok" and r["verify"] == "ok", r
        assert r["vendor"] == "Generic" and r["model"] == "STORAGE DEVICE", r
        assert int(r["size"]) == SECTORS * 512, r
    assert hostname_of(system.root / "dev/sdd") == recorded["CARD-C"]["device"]
    assert hostname_of(system.root / "dev/sdc") == recorded["CARD-B"]["device"]


def test_a_full_card_fails_alone_and_its_device_goes_to_the_next_card(
    fleet_copy: Path, tmp_path: Path
) -> None:
    system = FakeSystem(tmp_path / "root")
    usb_reader(system, 0)
    system.done()
    with running(fleet_copy, system.root) as station:
        full = system.root / "dev/sdb"
        full.unlink()
        full.symlink_to("/dev/full")  # every write: ENOSPC, as a card that fills up
        push_card(system, "sdb", SECTORS, "FULL-1")
        failed = station.wait_for(r"edge-001 .*failed")
        assert "No space left on device" in failed, failed
        # the next card, in another reader, becomes edge-001: the failed card gave it back
        usb_reader(system, 1, SECTORS, "GOOD-2")
        station.wait_for(r"edge-001 .*/dev/sdc: done: remove the card")
        code = station.stop(signal.SIGINT)
    assert code == 11, f"exit {code}, not 10 + 1 failed card: {station.output()}"
    assert "1 of 2 cards flashed; 1 failed" in station.output()
    outcomes = [(r["serial"], r["device"], r["outcome"]) for r in rows(fleet_copy)]
    assert outcomes == [("FULL-1", "edge-001", "failed"), ("GOOD-2", "edge-001", "ok")]
    assert "No space left on device" in rows(fleet_copy)[0]["detail"]


def test_a_card_too_small_is_not_written_and_takes_no_device(
    fleet_copy: Path, tmp_path: Path
) -> None:
    system = FakeSystem(tmp_path / "root")
    usb_reader(system, 0)
    system.done()
    with running(fleet_copy, system.root) as station:
        push_card(system, "sdb", 2048, "TINY")  # 1 MiB
        line = station.wait_for(r"/dev/sdb: not written")
        assert "is too small" in line, line
        usb_reader(system, 1, SECTORS, "OK-1")
        station.wait_for(r"edge-001 .*/dev/sdc: done")
        code = station.stop(signal.SIGINT)
    assert code == 0, station.output()
    assert [(r["serial"], r["device"]) for r in rows(fleet_copy)] == [("OK-1", "edge-001")]


def test_the_station_stops_when_every_device_has_a_card(fleet_copy: Path, tmp_path: Path) -> None:
    ledger = Ledger(fleet_copy / "out/flash-ledger.csv")
    system = FakeSystem(tmp_path / "root")
    system.done()
    station = Station(fleet_copy, system.root, "--device", "edge-004")  # one device: one card
    try:
        station.wait_for(r"waiting for cards \(1 devices left\)")
        usb_reader(system, 0, SECTORS, "LAST")
        station.wait_for(r"edge-004 .*done")
        station.wait_for("every device of the fleet has a card")
        code = station.finish(30)
    finally:
        station.kill()
    assert code == 0, station.output()
    assert [(r.device, r.serial, r.outcome) for r in ledger.rows()] == [("edge-004", "LAST", "ok")]


def test_no_device_left_is_one_line_exit_2_before_waiting(fleet_copy: Path, tmp_path: Path) -> None:
    system = FakeSystem(tmp_path / "root")
    system.done()
    digest = sha256(fleet_copy / GOLDEN)
    ledger = Ledger(fleet_copy / "out/flash-ledger.csv")
    for n in range(1, 5):
        device = f"edge-{n:03d}"
        ledger.append(Row(device, f"/dev/sd{n}", "", "", "", 0, digest, "", "", 0, "ok", "ok"))
    station = Station(fleet_copy, system.root)
    try:
        code = station.finish(30)
    finally:
        station.kill()
    assert code == 2, station.output()
    errors = [line for line in station.lines if line.startswith("pifleet: error:")]
    assert len(errors) == 1 and "no device left to flash" in errors[0], station.output()
    assert "waiting for cards" not in station.output()


def test_a_disk_whose_medium_stayed_is_not_new_whatever_its_size_does(
    fleet_copy: Path, tmp_path: Path
) -> None:
    """Found by review: a card present at the start, its size read as 0 and back (the same
    diskseq: the same medium), was flashed. Only a new medium (a new diskseq) is a card."""
    system = FakeSystem(tmp_path / "root")
    present = usb_reader(system, 0, SECTORS, serial="BACKUP")
    system.done()
    before = sha256(present)
    with running(fleet_copy, system.root) as station:
        size = system.root / "sys/block/sdb/size"
        size.write_text("0\n")
        time.sleep(1.2)  # two looks of the station
        size.write_text(f"{SECTORS}\n")
        time.sleep(1.2)
        push_card(system, "sdb", SECTORS, "NEW")  # now a new medium: a card
        station.wait_for(r"edge-001 .*done")
        code = station.stop(signal.SIGINT)
    assert code == 0, station.output()
    assert [r["serial"] for r in rows(fleet_copy)] == ["NEW"]
    assert before != sha256(present)  # the node now holds the new card, written once


def test_a_hostile_card_cannot_reach_the_terminal_nor_stop_the_station(
    fleet_copy: Path, tmp_path: Path
) -> None:
    """Found by review: a vendor that is not UTF-8 crashed the station (and the card in
    progress), and escape codes and markup in a vendor or serial reached the output raw."""
    system = FakeSystem(tmp_path / "root")
    usb_reader(system, 0)
    usb_reader(system, 1)
    system.done()
    with running(fleet_copy, system.root) as station:
        vendor = system.root / "sys/block/sdb/device/vendor"
        vendor.write_bytes(
            b"\xff\xfe[/x]\x1b]0;PWNED\x07\x1b[2J[link=https://x.example]Ev\nforged line\n"
        )
        push_card(system, "sdb", SECTORS, "SER\x1b[31m")
        station.wait_for(r"edge-001 .*done")
        push_card(system, "sdc", SECTORS, "NEXT")
        station.wait_for(r"edge-002 .*done")
        code = station.stop(signal.SIGINT)
    assert code == 0, station.output()
    out = station.output()
    assert "\x1b" not in out and "\x07" not in out, "a card's codes reached the terminal"
    assert not any(line.startswith("forged line") for line in station.lines)
    assert [r["serial"] for r in rows(fleet_copy)] == ["SER\\x1b[31m", "NEXT"]
    assert rows(fleet_copy)[0]["vendor"].endswith("Ev\\x0aforged line")


def test_the_live_table_shows_a_card_s_markup_as_text(tmp_path: Path) -> None:
    """Found by review: `[/x]` in a vendor ended the run with a MarkupError, and `[link=…]`
    put a hyperlink on the terminal."""
    import io

    from rich.console import Console

    from builder.fleet.board import Board
    from builder.fleet.destination import BlockDestination
    from builder.fleet.rounds import Card

    board = Board(live=False)
    hostile = "[/x] [link=https://evil.example]Generic[/link] \x1b]8;;x\x07"
    board.add(Card(BlockDestination(Path("/dev/sdb"), vendor=hostile, serial="[bold]1"), None))
    screen = io.StringIO()
    Console(file=screen, force_terminal=True, width=200).print(board._table())
    shown = screen.getvalue()
    assert "\x1b]8;" not in shown, "a hyperlink reached the terminal"
    assert "[/x] [link=https://evil.example]Generic[/link]" in shown
    assert "[bold]1" in shown


def test_on_a_terminal_the_live_table_shows_every_card(fleet_copy: Path) -> None:
    """Several cards on a terminal (a pty): the live table's rows, each card's device and
    phase, and the run's result; no traceback, no internal error."""
    import os
    import pty
    import sys

    from tests.conftest import REPO

    argv = [sys.executable, "-m", "builder", "flash", GOLDEN, "a.img", "b.img",
            "--config", "fleet.yaml", "--yes"]  # fmt: skip
    pid, fd = pty.fork()
    if pid == 0:  # the child: the real CLI on the pty
        os.chdir(fleet_copy)
        os.environ["PYTHONPATH"] = str(REPO)
        os.environ["COLUMNS"] = "160"
        os.execv(sys.executable, argv)
    screen = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the pty
            break
        if not data:
            break
        screen += data
    _, status = os.waitpid(pid, 0)
    shown = screen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, shown[-3000:]
    assert "Traceback" not in shown and "internal error" not in shown, shown[-3000:]
    assert "device" in shown and "phase" in shown and "MB/s" in shown, shown[-3000:]
    assert "edge-001" in shown and "edge-002" in shown and "done" in shown
    assert "2 of 2 cards flashed and verified" in shown


def test_the_station_watches_the_real_machine_through_udev() -> None:
    """On this machine's own /sys (real libudev through pyudev when it can listen, else
    polling): a look finds no new card, and waiting returns."""
    from builder.fleet.cards import Watcher

    watcher = Watcher()
    began = time.monotonic()
    watcher.wait(0.3)
    assert time.monotonic() - began < 5
    assert watcher.new_cards() == []


def test_a_dry_run_station_writes_nothing_even_when_a_card_comes(
    fleet_copy: Path, tmp_path: Path
) -> None:
    """Found in review: --station ignored --dry-run. It now says what it would do and ends
    before watching; a card pushed in meanwhile stays as it was."""
    system = FakeSystem(tmp_path / "root")
    card = usb_reader(system, 0)
    system.done()
    push_card(system, "sdb", SECTORS, "UNTOUCHED")
    before = sha256(card)
    station = Station(fleet_copy, system.root, "--dry-run")
    code = station.finish(30)
    assert code == 0, station.output()
    assert "dry run: would wait for cards (4 devices left)" in station.output()
    assert "waiting for cards;" not in station.output()
    assert sha256(card) == before and not (fleet_copy / "out/flash-ledger.csv").exists()
