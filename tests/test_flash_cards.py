"""`pifleet flash IMAGE T1 T2 T3 --config fleet.yaml` (issue 25): several cards at once,
each the next device the ledger has not seen flashed with this image; a card that fails
fails alone; the ledger lets a later run go on where this one stopped.

The cards are regular files (a file on a 2 MiB tmpfs is a card that fills up); the
golden image is built by the real `pifleet build`.
"""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest

from tests.flash_helpers import GOLDEN, one_line_error, run
from tests.image_read import sha256
from tests.station_helpers import fleet_copy, four_devices, hostname_of

__all__ = ["fleet_copy", "four_devices"]  # the fixtures this module's tests take


def flash(fleet_copy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run("flash", GOLDEN, *args, "--config", "fleet.yaml", "--yes", cwd=fleet_copy)


def ledger(fleet_copy: Path, name: str = "flash-ledger.csv") -> list[dict[str, str]]:
    with open(fleet_copy / "out" / name, newline="") as f:
        return list(csv.DictReader(f))


def test_three_cards_become_the_first_three_devices(fleet_copy: Path) -> None:
    proc = flash(fleet_copy, "a.img", "b.img", "c.img")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 of 3 cards flashed and verified" in proc.stdout
    became = {card: hostname_of(fleet_copy / card) for card in ("a.img", "b.img", "c.img")}
    assert became == {"a.img": "edge-001", "b.img": "edge-002", "c.img": "edge-003"}
    digest = sha256(fleet_copy / GOLDEN)
    rows = ledger(fleet_copy)
    assert sorted((r["card"], r["device"]) for r in rows) == sorted(became.items())
    for r in rows:
        assert (r["outcome"], r["verify"], r["image_sha256"]) == ("ok", "ok", digest), r
        assert int(r["bytes_written"]) > 0 and r["started"] <= r["ended"], r
    for card in became:
        assert (fleet_copy / card).stat().st_mode & 0o777 == 0o600, "a card holds the join token"


def test_a_later_run_skips_what_was_flashed_and_reflash_redoes_one(fleet_copy: Path) -> None:
    assert flash(fleet_copy, "a.img", "b.img").returncode == 0
    proc = flash(fleet_copy, "c.img")  # one card, no --device: the next device not yet flashed
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert hostname_of(fleet_copy / "c.img") == "edge-003"
    proc = flash(fleet_copy, "d.img", "e.img")  # only edge-004 is left
    one_line_error(proc, 2, "2 cards but only 1 of 4 devices left", "nothing written")
    assert not (fleet_copy / "d.img").exists() and not (fleet_copy / "e.img").exists()
    proc = flash(fleet_copy, "d.img", "e.img", "--reflash", "edge-002")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (hostname_of(fleet_copy / "d.img"), hostname_of(fleet_copy / "e.img")) == (
        "edge-002",
        "edge-004",
    )
    one_line_error(flash(fleet_copy, "f.img"), 2, "no device left to flash", "--reflash DEVICE")
    assert not (fleet_copy / "f.img").exists()


def test_named_devices_are_used_in_order(fleet_copy: Path) -> None:
    proc = flash(fleet_copy, "a.img", "b.img", "--device", "edge-004", "--device", "edge-002")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (hostname_of(fleet_copy / "a.img"), hostname_of(fleet_copy / "b.img")) == (
        "edge-004",
        "edge-002",
    )


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["a.img", "b.img", "--device", "edge-001"], ["1 devices for 2 cards"]),
        (["a.img", "b.img", "--device", "edge-001", "--device", "edge-001"], ["given twice"]),
        (["a.img", "--reflash", "edge-009"], ["no device named 'edge-009'"]),
        (["a.img", "b.img", "--device", "edge-001", "--device", "edge-002", "--reflash", "edge-001"],
         ["--device and --reflash exclude each other"]),
        (["a.img", "./a.img"], ["a.img (target 2): the same file as target 1 (a.img)"]),
        (["a.img", "link.img"], ["link.img (target 2): the same file as target 1"]),
        (["a.img", "hard.img"], ["hard.img (target 2): the same file as target 1"]),
        (["a.img", GOLDEN], ["is the image being flashed itself"]),
        (["a.img", "fleet.yaml"], ["fleet.yaml: is"]),
        (["a.img", "--ledger", "out/ledger.txt"], ["a ledger is a .csv or a .jsonl file"]),
        (["a.img", "--station"], ["--station waits for cards; name no target"]),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    fleet_copy: Path, args: list[str], fragments: list[str]
) -> None:
    (fleet_copy / "a.img").write_bytes(b"")
    (fleet_copy / "link.img").symlink_to("a.img")
    os.link(fleet_copy / "a.img", fleet_copy / "hard.img")
    fleet = (fleet_copy / "fleet.yaml").read_bytes()
    one_line_error(flash(fleet_copy, *args), 2, *fragments)
    assert (fleet_copy / "a.img").stat().st_size == 0 and (
        fleet_copy / "fleet.yaml"
    ).read_bytes() == fleet
    assert (
        not (fleet_copy / "b.img").exists() and not (fleet_copy / "out/flash-ledger.csv").exists()
    )


def test_a_dry_run_of_several_cards_writes_nothing(fleet_copy: Path) -> None:
    proc = flash(fleet_copy, "a.img", "b.img", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "dry run: would write" in proc.stdout and "2 cards" in proc.stdout
    assert (
        not (fleet_copy / "a.img").exists() and not (fleet_copy / "out/flash-ledger.csv").exists()
    )


def test_a_jsonl_ledger(fleet_copy: Path) -> None:
    import json

    assert flash(fleet_copy, "a.img", "--ledger", "out/cards.jsonl").returncode == 0
    [row] = [json.loads(line) for line in (fleet_copy / "out/cards.jsonl").read_text().splitlines()]
    assert (row["device"], row["card"], row["outcome"]) == ("edge-001", "a.img", "ok")


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A 2 MiB tmpfs: a card that fills up long before the image's 7 MiB of data."""
    where = tmp_path / "tiny"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", str(where)], check=True)


def test_a_card_that_fills_up_fails_alone_and_its_device_stays_unflashed(
    fleet_copy: Path, tiny: Path
) -> None:
    full = tiny / "b.img"
    proc = flash(fleet_copy, "a.img", str(full), "c.img")
    assert proc.returncode == 11, f"exit {proc.returncode}, not 10 + 1: {proc.stdout}{proc.stderr}"
    assert "2 of 3 cards flashed; 1 failed" in proc.stdout
    assert "No space left on device" in proc.stdout
    assert list(tiny.iterdir()) == [], "the full card's temporary copy was left"
    assert (hostname_of(fleet_copy / "a.img"), hostname_of(fleet_copy / "c.img")) == (
        "edge-001",
        "edge-003",
    )
    outcome = {r["device"]: (r["outcome"], r["card"]) for r in ledger(fleet_copy)}
    assert outcome == {"edge-001": ("ok", "a.img"), "edge-002": ("failed", str(full)),
                       "edge-003": ("ok", "c.img")}  # fmt: skip
    proc = flash(fleet_copy, "d.img")  # the failed card's device is the next one to flash
    assert proc.returncode == 0 and hostname_of(fleet_copy / "d.img") == "edge-002"


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("out/flash-ledger.csv", "is the flash ledger"),
        ("out/known_hosts", "is the fleet's known_hosts"),
        ("out/devices/edge-001/node-password", "is a device identity file"),
    ],
)
def test_the_ledger_and_the_identities_are_never_a_target(
    fleet_copy: Path, target: str, fragment: str
) -> None:
    """Found by review: the image was renamed over the ledger and over a device's key."""
    assert flash(fleet_copy, "a.img").returncode == 0  # the ledger, known_hosts and edge-001's keys
    before = (fleet_copy / target).read_bytes()
    one_line_error(flash(fleet_copy, "b.img", target), 2, fragment)
    assert (fleet_copy / target).read_bytes() == before and not (fleet_copy / "b.img").exists()


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        ("symlink", "cannot open the ledger: a symlink"),
        ("fifo", "not a regular file"),
        ("no header", "not a pifleet flash ledger (no header line)"),
        ("csv garbage", "not a ledger"),
        ("missing folder", "cannot open the ledger"),
    ],
)
def test_a_ledger_that_cannot_take_rows_is_refused_before_any_card(
    fleet_copy: Path, make: str, fragment: str
) -> None:
    """Found by review: cards were written, then not recorded (and exit 0)."""
    path = fleet_copy / "out/flash-ledger.csv"
    args: list[str] = []
    if make == "symlink":
        (fleet_copy / "real.csv").write_text("")
        path.symlink_to(fleet_copy / "real.csv")
    elif make == "fifo":
        os.mkfifo(path)
    elif make == "no header":
        path.write_text("edge-001,a.img,,,,0,x,,,0,ok,ok,\n")
    elif make == "csv garbage":  # a quoted field longer than csv's field limit
        from builder.fleet.ledger import COLUMNS

        path.write_text(",".join(COLUMNS) + '\n"' + "x" * 200_000 + "\n")
    else:
        args = ["--ledger", "no-such-folder/ledger.csv"]
    proc = flash(fleet_copy, "a.img", "b.img", *args)
    one_line_error(proc, 2, fragment)
    assert not (fleet_copy / "a.img").exists() and not (fleet_copy / "b.img").exists()


def test_two_runs_on_one_ledger_never_take_the_same_device(fleet_copy: Path) -> None:
    """Found by review: both runs flashed edge-001 and edge-002. A claim held by another run
    (as its flock on `<ledger>.claims/<device>`) makes this run take the next devices."""
    import fcntl

    claims = fleet_copy / "out/flash-ledger.csv.claims"
    claims.mkdir()
    fd = os.open(claims / "edge-001", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = flash(fleet_copy, "a.img", "b.img")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert (hostname_of(fleet_copy / "a.img"), hostname_of(fleet_copy / "b.img")) == (
            "edge-002",
            "edge-003",
        )
        one_line_error(flash(fleet_copy, "c.img", "d.img"), 2, "another pifleet run on this ledger")
        assert not (fleet_copy / "c.img").exists()
    finally:
        os.close(fd)
    proc = flash(fleet_copy, "c.img")  # the other run is gone: its device is free again
    assert proc.returncode == 0 and hostname_of(fleet_copy / "c.img") == "edge-001"


def test_cards_stopped_mid_round_are_recorded_interrupted_and_leave_no_file(
    fleet_copy: Path,
) -> None:
    """Found by review: stopped cards were recorded `failed`, as if the card were bad. A
    round stopped (a second Ctrl-C) as its cards start: each row says `interrupted`, each
    device goes back, and no file target is left, under its name or a temporary one."""
    from builder.config.fleet import load
    from builder.fleet.destination import FileDestination
    from builder.fleet.flash import block_map_of
    from builder.fleet.ledger import Ledger
    from builder.fleet.rounds import Card, Context, run_round

    config = load(fleet_copy / "fleet.yaml")
    image = fleet_copy / GOLDEN
    given_back: list[str] = []
    ledger = Ledger(fleet_copy / "out/flash-ledger.csv")
    ctx = Context(image=image, block_map=block_map_of(image, None), image_sha256=sha256(image),
                  config=config, ledger=ledger, event=lambda card, text: ctx.stop.set(),
                  give_back=lambda d: given_back.append(d.hostname), release=lambda d: None)  # fmt: skip
    cards = [Card(FileDestination(fleet_copy / f"{n}.img"), config.devices[n]) for n in range(2)]
    run_round(ctx, cards)
    assert [(r.device, r.outcome) for r in ledger.rows()] == [
        ("edge-001", "interrupted"), ("edge-002", "interrupted")
    ]  # fmt: skip
    assert sorted(given_back) == ["edge-001", "edge-002"]
    assert sorted(p.name for p in fleet_copy.iterdir() if p.name.endswith((".img", ".tmp"))) == []


def test_a_card_that_reads_back_differently_fails_alone(fleet_copy: Path, tmp_path: Path) -> None:
    """A card that returns other bytes than were written to it (a fake-capacity or failing
    card): its writes go to one file, its reads come from another, all zeros. It alone
    fails, as a bad read-back; the honest card beside it is whole."""
    import threading

    from builder.fleet.fanout import Sink, fan_out
    from builder.fleet.flash import block_map_of

    image = fleet_copy / GOLDEN
    block_map = block_map_of(image, None)
    good, written, lies = tmp_path / "good.img", tmp_path / "written.img", tmp_path / "lies.img"
    for path in (good, written, lies):
        with open(path, "wb") as f:
            f.truncate(block_map.size)
    fds = [os.open(good, os.O_WRONLY), os.open(written, os.O_WRONLY)]
    honest, liar = Sink(good, fds[0], good), Sink(lies, fds[1], lies)
    try:
        fan_out(image, block_map, [honest, liar], threading.Event())
    finally:
        for fd in fds:
            os.close(fd)
    assert honest.failure == "" and not honest.bad_read_back
    assert liar.bad_read_back and "read back differently: bad card?" in liar.failure
    assert sha256(good) == sha256(image)
