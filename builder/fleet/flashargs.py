"""The arguments of `pifleet flash` (the command itself: `builder.fleet.flashing`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`pifleet flash` (cli.py imports this module to build its parser: keep it light)."""
    p = sub.add_parser(
        "flash",
        help="write an image to SD cards with its .bmap, verify, personalize (one, several, or a station)",
        description=(
            "Write IMAGE to each TARGET (a whole card such as /dev/sdb, or an image file), all in "
            "parallel from one read of the image; read each back and verify it; with --config, "
            "personalize each as the next fleet device not yet flashed with this image (or the "
            "--device names, in order) and record it in the ledger. --station waits for cards "
            "instead. Exit 0 when every card succeeded, 10 + N when N cards failed, 2 for bad "
            "input (nothing written)."
        ),
    )
    p.add_argument("image", help="image to write (its .bmap next to it is used when present)")
    p.add_argument(
        "target",
        nargs="*",
        help="the whole card(s), e.g. /dev/sdb /dev/sdc or /dev/mmcblk0 (or image files)",
    )
    p.add_argument("--bmap", metavar="FILE", help="bmap file (default: IMAGE.bmap)")
    p.add_argument("--config", help="fleet YAML, to personalize each card as one of its devices")
    p.add_argument(
        "--device",
        metavar="HOST",
        action="append",
        help="the device a card becomes (repeatable: one per target, in order; "
        "default: the next devices the ledger has not seen flashed)",
    )
    p.add_argument(
        "--reflash",
        metavar="HOST",
        action="append",
        help="flash this device again although the ledger has it flashed (repeatable)",
    )
    p.add_argument(
        "--station",
        action="store_true",
        help="wait for cards: each removable disk pushed in from now on becomes the next device; "
        "Ctrl-C stops after the cards in progress",
    )
    p.add_argument(
        "--ledger",
        metavar="FILE",
        help="the flash ledger, .csv or .jsonl (default: OUTPUT_DIR/flash-ledger.csv)",
    )
    p.add_argument(
        "--system-root",
        metavar="DIR",
        default="/",
        help="read /sys, /proc and /dev under DIR (default: /; for tests and containers)",
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--dry-run", action="store_true", help="show what would be written; write nothing"
    )
    p.set_defaults(handler="builder.fleet.flashing:command")
