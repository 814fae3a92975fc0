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
from tests.station_helpers import build_fleet, hostname_of


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fleet(tmp_path_factory.mktemp("cards-golden"), devices=4)


@pytest.fixture
def work(built: Path, tmp_path: Path) -> Path:
    d = tmp_path / "fleet"
    subprocess.run(["cp", "-a", "--sparse=always", str(built), str(d)], check=True)
    return d


def flash(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run("flash", GOLDEN, *args, "--config", "fleet.yaml", "--yes", cwd=work)


def ledger(work: Path, name: str = "flash-ledger.csv") -> list[dict[str, str]]:
    with open(work / "out" / name, newline="") as f:
        return list(csv.DictReader(f))


def test_three_cards_become_the_first_three_devices(work: Path) -> None:
    proc = flash(work, "a.img", "b.img", "c.img")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 of 3 cards flashed and verified" in proc.stdout
    became = {card: hostname_of(work / card) for card in ("a.img", "b.img", "c.img")}
    assert became == {"a.img": "edge-001", "b.img": "edge-002", "c.img": "edge-003"}
    digest = sha256(work / GOLDEN)
    rows = ledger(work)
    assert sorted((r["card"], r["device"]) for r in rows) == sorted(became.items())
    for r in rows:
        assert (r["outcome"], r["verify"], r["image_sha256"]) == ("ok", "ok", digest), r
        assert int(r["bytes_written"]) > 0 and r["started"] <= r["ended"], r
    for card in became:
        assert (work / card).stat().st_mode & 0o777 == 0o600, "a card holds the join token"


def test_a_later_run_skips_what_was_flashed_and_reflash_redoes_one(work: Path) -> None:
    assert flash(work, "a.img", "b.img").returncode == 0
    proc = flash(work, "c.img")  # one card, no --device: the next device not yet flashed
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert hostname_of(work / "c.img") == "edge-003"
    proc = flash(work, "d.img", "e.img")  # only edge-004 is left
    one_line_error(proc, 2, "2 cards but only 1 of 4 devices left", "nothing written")
    assert not (work / "d.img").exists() and not (work / "e.img").exists()
    proc = flash(work, "d.img", "e.img", "--reflash", "edge-002")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (hostname_of(work / "d.img"), hostname_of(work / "e.img")) == ("edge-002", "edge-004")
    one_line_error(flash(work, "f.img"), 2, "no device left to flash", "--reflash DEVICE")
    assert not (work / "f.img").exists()


def test_named_devices_are_used_in_order(work: Path) -> None:
    proc = flash(work, "a.img", "b.img", "--device", "edge-004", "--device", "edge-002")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (hostname_of(work / "a.img"), hostname_of(work / "b.img")) == ("edge-004", "edge-002")


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
    work: Path, args: list[str], fragments: list[str]
) -> None:
    (work / "a.img").write_bytes(b"")
    (work / "link.img").symlink_to("a.img")
    os.link(work / "a.img", work / "hard.img")
    fleet = (work / "fleet.yaml").read_bytes()
    one_line_error(flash(work, *args), 2, *fragments)
    assert (work / "a.img").stat().st_size == 0 and (work / "fleet.yaml").read_bytes() == fleet
    assert not (work / "b.img").exists() and not (work / "out/flash-ledger.csv").exists()


def test_a_dry_run_of_several_cards_writes_nothing(work: Path) -> None:
    proc = flash(work, "a.img", "b.img", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "dry run: would write" in proc.stdout and "2 cards" in proc.stdout
    assert not (work / "a.img").exists() and not (work / "out/flash-ledger.csv").exists()


def test_a_jsonl_ledger(work: Path) -> None:
    import json

    assert flash(work, "a.img", "--ledger", "out/cards.jsonl").returncode == 0
    [row] = [json.loads(line) for line in (work / "out/cards.jsonl").read_text().splitlines()]
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
    work: Path, tiny: Path
) -> None:
    full = tiny / "b.img"
    proc = flash(work, "a.img", str(full), "c.img")
    assert proc.returncode == 11, f"exit {proc.returncode}, not 10 + 1: {proc.stdout}{proc.stderr}"
    assert "2 of 3 cards flashed; 1 failed" in proc.stdout
    assert "No space left on device" in proc.stdout
    assert list(tiny.iterdir()) == [], "the full card's temporary copy was left"
    assert (hostname_of(work / "a.img"), hostname_of(work / "c.img")) == ("edge-001", "edge-003")
    outcome = {r["device"]: (r["outcome"], r["card"]) for r in ledger(work)}
    assert outcome == {"edge-001": ("ok", "a.img"), "edge-002": ("failed", str(full)),
                       "edge-003": ("ok", "c.img")}  # fmt: skip
    proc = flash(work, "d.img")  # the failed card's device is the next one to flash
    assert proc.returncode == 0 and hostname_of(work / "d.img") == "edge-002"
