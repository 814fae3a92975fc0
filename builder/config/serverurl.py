"""A K3s server URL, a network timeout and an output file given on the command line (`token pin`,
`token check`), checked before anything is read, sent or asked: one line, exit 2 (UserError).

The URL follows cluster.server's rule (builder/config/reader.py): `https://host[:port]` and
nothing more. In particular no `user:password@`: `token pin` and `token check` authenticate with
the token file, and credentials in a URL would be sent to whichever server answers and would
show up in every message that names the server. `http://` is refused here, as bad input,
before a request is made: the agent speaks https only (firstboot/server.py).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from urllib.parse import SplitResult, urlsplit

from builder.util.errors import UserError

MAX_TIMEOUT = 3600.0  # seconds: an hour is long for one request; a typo like 1e30 is refused
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SHOWN = 60  # characters of the given value echoed in a message


def server_url(value: str) -> str:
    """`value` as https://host[:port] without a trailing slash; UserError in one line saying
    what is wrong (never echoing a password given in it)."""
    if any(c.isspace() or not c.isprintable() for c in value):
        raise UserError(f"{_shown(value)}: a server URL holds no spaces or control characters")
    try:
        url = urlsplit(value.rstrip("/"))
        port = url.port
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535", "Port could..."
        raise UserError(f"{_shown(value)}: not a URL: {_reason(exc)}") from None
    if url.scheme != "https":
        raise UserError(
            f"{_shown(value)}: must be https://host[:port] (a K3s server speaks https only)"
        )
    if url.username is not None or url.password is not None:
        raise UserError(
            f"{_shown(value)}: a server URL carries no user name or password: they would be "
            "sent to the server and logged; the token file authenticates"
        )
    if not _host_ok(url):
        raise UserError(f"{_shown(value)}: must be https://host[:port] with a host name or address")
    if port == 0 or url.netloc.endswith(":"):
        raise UserError(f"{_shown(value)}: the port must be 1-65535")
    if url.path or url.query or url.fragment:
        raise UserError(f"{_shown(value)}: must be https://host[:port] and nothing more")
    return url.geturl()


def timeout(value: str | float) -> float:
    """`value` as seconds: a number more than 0 and at most MAX_TIMEOUT (not NaN, not inf)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT):
        raise UserError(
            f"{_shown(str(value))}: a timeout is a number of seconds, more than 0 and at most "
            f"{MAX_TIMEOUT:.0f}"
        )
    return seconds


def check(server: str, seconds: str | float) -> tuple[str, float]:
    """Both at once, for a command's first line: (URL, seconds), or UserError naming the
    option."""
    try:
        url = server_url(server)
    except UserError as exc:
        raise UserError(f"--server: {exc}") from None
    try:
        return url, timeout(seconds)
    except UserError as exc:
        raise UserError(f"--timeout: {exc}") from None


def output_file(value: str) -> str:
    """A file the command creates or replaces: refused at once when it cannot be one (a
    directory, a missing folder), before anything is fetched or asked."""
    folder = os.path.dirname(value) or "."
    if os.path.isdir(value):
        raise UserError(f"{value!r} is a directory; give the file to write")
    if not os.path.isdir(folder):
        raise UserError(f"{value!r}: folder {folder!r} does not exist")
    return value


def _host_ok(url: SplitResult) -> bool:
    host = url.hostname or ""
    if url.netloc.startswith("["):
        try:
            return ipaddress.ip_address(host.split("%", 1)[0]).version == 6
        except ValueError:
            return False
    if len(host) > 253:
        return False
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    labels = host.split(".")
    numeric = labels[-1].isdigit()  # 10.0.0.300 or 1.2.3: a mistyped address, not a name
    return not numeric and all(_LABEL.fullmatch(label) for label in labels)


def _shown(value: str) -> str:
    """The value for a message: printable, cut short, and with any password in it hidden."""
    if "@" in value:  # whatever precedes the last @ may be a password, even with / or ? in it
        scheme, sep, _ = value.partition("://")
        value = (scheme + sep if sep else "") + "***@" + value.rsplit("@", 1)[1]
    return repr(value if len(value) <= _SHOWN else value[: _SHOWN - 3] + "...")  # escapes controls


def _reason(exc: ValueError) -> str:
    text = str(exc)
    return "the port must be 1-65535" if "Port" in text else text
