"""`pifleet boot-test`'s options, checked before anything is created or booted: each bad
value is one line naming the option (a missing --kernel used to go on to make the overlay)."""

from __future__ import annotations

import argparse
from pathlib import Path
from urllib.parse import urlsplit

from builder.util.argtypes import checked, positive_seconds
from builder.util.errors import UserError


def check_options(args: argparse.Namespace) -> None:
    """Every option of `boot-test`, refused in one line before anything is created or booted."""
    checked("--timeout", args.timeout, positive_seconds)
    _existing_file("image", args.image)
    for option, value in (("--kernel", args.kernel), ("--initrd", args.initrd)):
        if value is not None:
            _existing_file(option, value)
    if getattr(args, "machine", "virt") != "virt" and args.kernel is not None:
        raise UserError(
            f"--kernel is for -M virt: --machine {args.machine} boots the image's own kernel"
        )
    if args.initrd is not None and args.kernel is None:
        raise UserError("--initrd needs --kernel (the image's own kernel comes with its initrd)")
    if args.server is not None:
        parts = urlsplit(args.server)
        if parts.scheme != "https" or not parts.hostname or any(c.isspace() for c in args.server):
            raise UserError(f"--server {args.server!r}: not an https://host:port URL")
        if args.token_file is None:
            raise UserError("--server needs --token-file (the token the image should join with)")
    if args.keep is not None and Path(args.keep).exists() and not Path(args.keep).is_dir():
        raise UserError(f"--keep {args.keep}: not a folder (the VM disk and console log go there)")
    if args.junit is not None:
        junit = Path(args.junit)
        if junit.is_dir():
            raise UserError(f"--junit {args.junit}: a folder; give the file to write")
        if not junit.parent.is_dir():
            raise UserError(f"--junit {args.junit}: folder {junit.parent} does not exist")


def _existing_file(option: str, value: str) -> None:
    path = Path(value)
    if not path.exists():
        raise UserError(f"{option} {value}: no such file")
    if not path.is_file() and not path.is_block_device():
        raise UserError(f"{option} {value}: not a regular file")
