"""`pifleet flash IMAGE TARGET...` and `pifleet flash IMAGE --station`: the command.

- One target with `--device HOST`, or with no fleet: the card is written, verified and
  personalized as before (`flash.flash`).
- Several targets, or a fleet without `--device`: every target is judged first (the same
  rules as for one card, plus: no two targets are one disk or one file); then all are
  written from one read of the image (`rounds`), each becoming the next device the ledger
  has not seen flashed with this image, or the `--device` names in order.
- `--station`: cards that appear from now on are flashed as they come (`station`).

With a fleet, every card gets a ledger row (`ledger`). The exit status of a run of several
cards is 0 when all succeeded, and 10 + N when N of them failed (N up to 100); bad input is
exit 2 with nothing written, as everywhere.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from builder.disk.table import read_table
from builder.fleet.destination import BlockDestination, Destination
from builder.fleet.flash import block_map_of, bmap_path, flash, personalize_card
from builder.fleet.ledger import NAME, OK, Ledger
from builder.fleet.pool import Claims, Pool, no_device_left, pool_for
from builder.fleet.target import describe
from builder.outputs import bmap
from builder.outputs.artifacts import manifest_inputs
from builder.util.batch import recover, same_file
from builder.util.console import human_size
from builder.util.errors import BuildError, UserError

if TYPE_CHECKING:
    from builder.config.model import Device, FleetConfig


def check_image(image: Path, bmap_file: Path | None) -> bmap.BlockMap:
    if not image.is_file():
        raise UserError(f"{image}: no such image file")
    read_table(image)  # a disk image, not any file: refused before any card is touched
    return block_map_of(image, bmap_file)


def judged(
    paths: list[Path],
    image: Path,
    bmap_file: Path | None,
    protected: Mapping[str, Path],
    block_map: bmap.BlockMap,
    system_root: Path,
) -> list[Destination]:
    """Every target, each passing the one-card rules, and no two of them the same."""
    own = {"image": image, "bmap": bmap_path(image, bmap_file)}
    targets: list[Destination] = []
    for n, path in enumerate(paths, 1):
        target = describe(path, system_root)
        target.refuse_inputs(own, protected)
        reason = target.refusal(block_map.size)
        if reason:
            raise UserError(reason)
        for m, other in enumerate(targets, 1):
            if _same_target(target, other):
                raise UserError(
                    f"{path} (target {n}): the same {_kind(target)} as target {m} "
                    f"({other.path}); give each card once"
                )
        targets.append(target)
    return targets


def _kind(target: Destination) -> str:
    return "disk" if isinstance(target, BlockDestination) else "file"


def _same_target(a: Destination, b: Destination) -> bool:
    if isinstance(a, BlockDestination) and isinstance(b, BlockDestination):
        try:
            ra, rb = os.stat(a.path), os.stat(b.path)
        except OSError:
            return False
        if stat.S_ISBLK(ra.st_mode) and stat.S_ISBLK(rb.st_mode):
            return ra.st_rdev == rb.st_rdev
    return same_file(a.path, b.path)


def confirm_all(targets: list[Destination], image: Path, block_map: bmap.BlockMap) -> None:
    if not sys.stdin.isatty():
        raise UserError(f"{targets[0].path}: not asking on a non-terminal; pass --yes to confirm")
    mapped = human_size(block_map.mapped_blocks * bmap.BLOCK)
    listed = "".join(f"  {t.summary()}\n" for t in targets)
    answer = input(
        f"Write {image.name} ({mapped} of data) to {len(targets)} cards:\n{listed}"
        "Everything on them will be lost. Type 'yes' to continue: "
    )
    if answer.strip().lower() != "yes":
        raise UserError(f"{targets[0].path}: not confirmed; nothing was written")


def command(args: argparse.Namespace) -> int:
    targets = [Path(t) for t in args.target]
    named: list[str] = args.device or []
    reflash: list[str] = args.reflash or []
    if args.station and targets:
        raise UserError(f"{targets[0]}: --station waits for cards; name no target with it")
    if not args.station and not targets:
        raise UserError("flash: give the card(s) to write, or --station to wait for cards")
    if (named or reflash or args.ledger) and not args.config:
        raise UserError(
            "--device, --reflash and --ledger need --config (the fleet the cards are for)"
        )
    if named and reflash:
        raise UserError(
            "--device and --reflash exclude each other (--device names the cards' devices)"
        )
    if named and not args.station and len(named) != len(targets):
        raise UserError(
            f"--device: {len(named)} devices for {len(targets)} cards; give one per card"
        )
    image = Path(args.image)
    recover(image.parent)  # a killed run's outputs there finish (or go) first
    if len(targets) == 1 and (named or not args.config):
        return _one(args, image, targets[0], named[0] if named else None)
    return _many(args, image, targets, named, reflash)


def _load(args: argparse.Namespace, image: Path) -> tuple[FleetConfig, dict[str, Path]]:
    from builder.config.fleet import load
    from builder.fleet.personalize import open_golden, protected_inputs
    from builder.plan import require_buildable

    config = load(Path(args.config))
    require_buildable(config)
    if image.is_file():
        open_golden(image)  # what personalizing needs, checked before any write
    protected = protected_inputs(config, image)
    protected["the flash ledger"] = ledger_path(args, config)
    protected["the fleet's known_hosts"] = config.output.dir / "known_hosts"
    identities = config.output.dir / "devices"
    if identities.is_dir():  # a device's host key and node password, kept for reflashing
        for n, kept in enumerate(p for p in identities.rglob("*") if p.is_file()):
            protected[f"a device identity file ({n})"] = kept
    return config, protected


def ledger_path(args: argparse.Namespace, config: FleetConfig) -> Path:
    return Path(args.ledger) if args.ledger else config.output.dir / NAME


def ledger_of(args: argparse.Namespace, config: FleetConfig) -> Ledger:
    return Ledger(ledger_path(args, config))


def _one(args: argparse.Namespace, image: Path, target: Path, name: str | None) -> int:
    """One card as ever: written, verified, then personalized as `name` when given (and
    then recorded in the ledger, as it is when writing or personalizing fails)."""
    bmap_file = Path(args.bmap) if args.bmap else None
    if name is None:
        flash(image, target, bmap_file, args.yes, args.dry_run, None, manifest_inputs(image))
        return 0
    from builder.fleet.personalize import find_device
    from builder.fleet.rounds import Card, record
    from builder.sources.digests import sha256_of

    config, protected = _load(args, image)
    device = find_device(config, name)
    ledger = ledger_of(args, config)
    ledger.rows()  # a ledger that cannot be read or appended to: refused before any write
    if not args.dry_run:
        ledger.check()
    card: Card | None = None

    def then(written: Path) -> None:
        assert card is not None
        changed = personalize_card(config, device, written, card.image_sha256)
        card.phase = "personalized"
        print(f"personalized {target} as {device.hostname} ({changed} files)")

    def started(dest: Destination, mapped: int) -> None:
        nonlocal card
        card = Card(dest, device, image_sha256=sha256_of(image), written=mapped)

    try:
        flash(image, target, bmap_file, args.yes, args.dry_run, then, protected, started)
    except BuildError as exc:
        if card is not None:
            card.failure = str(exc)
            record(ledger, card, "failed")
        raise
    if card is not None and not args.dry_run:
        card.verify = OK
        record(ledger, card, OK)
    if args.dry_run:
        print(f"dry run: would then personalize the card as {device.hostname}")
    return 0


def _many(
    args: argparse.Namespace, image: Path, paths: list[Path], named: list[str], reflash: list[str]
) -> int:
    from builder.fleet import rounds, station
    from builder.sources.digests import sha256_of

    config = ledger = None
    protected: Mapping[str, Path] = manifest_inputs(image)
    if args.config:
        config, protected = _load(args, image)
        ledger = ledger_of(args, config)
    bmap_file = Path(args.bmap) if args.bmap else None
    block_map = check_image(image, bmap_file)
    system_root = Path(args.system_root)
    targets = judged(paths, image, bmap_file, protected, block_map, system_root)
    digest = sha256_of(image)
    pool = None
    if config is not None and ledger is not None:
        flashed = ledger.flashed(digest)

        def still_free(name: str, ledger: Ledger = ledger) -> bool:
            return name not in ledger.flashed(digest)

        claims = Claims(ledger.path) if not args.dry_run else None
        pool = pool_for(config, flashed, named, reflash, claims, still_free)
        wanted = len(targets) or 1
        if len(pool) < wanted:
            raise UserError(no_device_left(config, flashed, wanted, len(pool)))
    mapped = block_map.mapped_blocks * bmap.BLOCK
    print(
        f"{image.name}: {human_size(block_map.size)}, {human_size(mapped)} mapped in {len(block_map.ranges)} ranges"
    )
    if ledger is not None and not args.dry_run:
        ledger.check()  # it can be appended to: no card is written that cannot be recorded
    ctx = station.context(image, block_map, digest, config, ledger, pool)
    if args.station and args.dry_run:
        left = f" ({len(pool)} devices left)" if pool is not None else ""
        print(
            f"dry run: would wait for cards{left} and write {human_size(mapped)} to each; nothing written"
        )
        return 0
    if args.station:
        return station.run(args, ctx, pool)
    for t in targets:
        print(f"target:  {t.summary()}")
    if args.dry_run:
        print(
            f"dry run: would write {human_size(mapped)} to {len(targets)} cards and verify them; nothing written"
        )
        return 0
    if not args.yes and any(t.needs_consent for t in targets):
        confirm_all(targets, image, block_map)
    cards = [rounds.Card(t, _take(pool)) for t in targets]
    return station.one_round(ctx, cards)


def _take(pool: Pool | None) -> Device | None:
    """A device for a named target; none free means another run is flashing the rest."""
    if pool is None:
        return None
    device = pool.take()
    if device is None:
        raise UserError(
            "no device free for every card: another pifleet run on this ledger is flashing the "
            "others (see its .claims folder); nothing written"
        )
    return device
