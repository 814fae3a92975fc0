"""`pifleet flash` bad input (issue 11): checked before the card is touched, targets
resolved before the safety rules, errors naming the user's path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.fleet import flash
from builder.util.errors import UserError
from tests.conftest import pifleet
from tests.flash_helpers import GOLDEN, built, one_line_error, run, work

__all__ = ["built", "work"]


def test_a_file_without_a_partition_table_is_not_flashed(work: Path) -> None:
    (work / "notes.bin").write_bytes(os.urandom(1 << 20))
    proc = run("flash", "notes.bin", "card.img", "--yes", cwd=work)
    one_line_error(proc, 2, "notes.bin: not a disk image (no partition table found)")
    assert not (work / "card.img").exists()


@pytest.mark.parametrize("target", ["//dev/pifleet-no-such-card", "card-link"])
def test_device_paths_are_resolved_before_the_rules(work: Path, target: str) -> None:
    (work / "card-link").symlink_to("/dev/pifleet-no-such-card")  # a dangling link into /dev
    proc = run("flash", GOLDEN, target, "--dry-run", cwd=work)
    one_line_error(proc, 2, f"{target}: no such device or file")
    assert not Path("/dev/pifleet-no-such-card").exists()


def test_a_bare_device_name_typed_in_dev_is_resolved(work: Path) -> None:
    proc = pifleet(
        "flash", str(work / GOLDEN), "pifleet-no-such-card", "--dry-run", cwd=Path("/dev")
    )
    one_line_error(proc, 2, "pifleet-no-such-card: no such device or file")
    assert not Path("/dev/pifleet-no-such-card").exists()


def test_personalize_checks_come_before_writing(work: Path) -> None:
    """A card personalized from an image pifleet did not build is refused before any write."""
    from tests.layouts import make_pi_image

    make_pi_image(work / "plain.img")
    proc = run(
        "flash", "plain.img", "card.img", "--config", "fleet.yaml", "--device", "pi-001", "--yes",
        cwd=work,
    )  # fmt: skip
    one_line_error(proc, 2, "plain.img: not built by `pifleet build`")
    assert "wrote and verified" not in proc.stdout
    assert not (work / "card.img").exists()


def test_errors_after_writing_name_the_users_file(work: Path) -> None:
    def failing(written: Path) -> None:
        raise UserError(f"{written}: the boot partition is full")

    card = work / "card.img"
    with pytest.raises(UserError) as info:
        flash.flash(work / GOLDEN, card, None, True, False, failing)
    assert str(info.value) == f"{card}: the boot partition is full"
    assert not card.exists() and not list(work.glob(".card.img*"))
