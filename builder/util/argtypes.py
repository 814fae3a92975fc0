"""Checks for command-line values, usable as argparse `type=` or on a parsed value.

Each takes the text as typed and returns the value, or raises `argparse.ArgumentTypeError`
with a short reason (argparse adds the option's name). `checked(option, value, check)` runs
one on a value already parsed and turns the reason into a one-line UserError.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
from collections.abc import Callable
from typing import TypeVar

from builder.util.errors import UserError

T = TypeVar("T")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def seconds(text: str) -> float:
    """A duration that may be 0: finite, not negative."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds cannot be negative")
    return value


def positive_seconds(text: str) -> float:
    """A duration above 0 (a timeout, an interval)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number of seconds above 0")
    return value


def count(text: str) -> int:
    """A whole number >= 0."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return int(text)


def port(text: str) -> int:
    """A TCP port to listen on: 1-65535, or 0 for any free port."""
    value = count(text) if text.strip().isdigit() else -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535, or 0 for any free one)")
    return value


def error_status(text: str) -> int:
    """An HTTP status code that says something failed: 400-599."""
    value = count(text) if text.strip().isdigit() else -1
    if not 400 <= value <= 599:
        raise argparse.ArgumentTypeError(f"{text!r} is not an HTTP error status (400-599)")
    return value


def host_name(text: str) -> str:
    """A DNS name (RFC 1123 labels) or an IP address, as a certificate names a host."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    labels = text[:-1].split(".") if text.endswith(".") else text.split(".")
    if len(text) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise argparse.ArgumentTypeError(
            f"{text[:80]!r} is neither an IP address nor a host name (letters, digits, '-', '.')"
        )
    return text


def checked(option: str, value: object, check: Callable[[str], T]) -> T:
    """`check` run on `value` (already parsed) as a one-line UserError naming `option`."""
    try:
        return check(str(value))
    except argparse.ArgumentTypeError as exc:
        raise UserError(f"{option}: {exc}") from None
