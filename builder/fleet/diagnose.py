"""`pifleet diagnose /dev/sdX|IMAGE`: the story a pulled card tells, and what to do about it.

The first-boot agent keeps `pifleet/report.json` on the boot partition (see
firstboot/card.py): where it got to, its last failure with how often and since
when, and the last journal lines, secrets removed. This reads it rootlessly
(mtools on the card or image, no mount) and prints the story, one remedy line
per known failure, and with `--journal` the journal lines.

What a card says is data: every string read from it goes through the device's redactor
again, which also knows the exact token, node password and Wi-Fi keys found on the card
(a token in the journal is never printed, whatever wrote it), and every line printed, the text, the
journal and `--json`, has its control characters escaped (`inert`), so no escape sequence on
a card reaches the terminal. A report of the wrong shape (a type, deep nesting) is refused
in one line, naming the key.

Exit 0 when the device joined, 1 when it did not (or never ran), 2 for bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from builder.disk.image import Image
from builder.layout import NM_CONNECTIONS
from builder.util.errors import PifleetError, UserError
from builder.util.terminal import inert
from firstboot import secrets as device
from firstboot.redact import Redactor, secrets_in_config

REPORT = "/pifleet/report.json"
# Besides the files of firstboot/secrets.py, where a device keeps Wi-Fi keys (as collect.py).
NETWORK_DIRS = ("/etc/netplan", NM_CONNECTIONS)
SECRET_MAX = 64 * 1024  # a larger "secret" file is not one
MAX_DEPTH = 16  # the agent writes 3 levels; anything deeper is not its report
# The keys the agent writes (firstboot/card.py) and their types; None (null) is always allowed.
Shape = type | dict[str, "Shape"] | list["Shape"]
SHAPE: dict[str, Shape] = {
    "version": int,
    "node": str,
    "server": str,
    "state": str,
    "detail": str,
    "updated": str,
    "timeline": [{"state": str, "at": str}],
    "last_failure": {"state": str, "reason": str, "count": int, "first": str, "last": str},
    "joined": {"node": str, "at": str},
    "journal": [str],
    "warnings": [str],
    "fsync": str,
}
_NAMES = {int: "a whole number", str: "a string", dict: "an object", list: "a list"}

# (what the failure reason says, what to do about it); the first match wins.
REMEDIES: tuple[tuple[str, str], ...] = (
    (
        r"before its CA's notBefore",
        "the server's clock is before its CA's validity (no time sync): give it NTP "
        "(systemd-timesyncd reaching a time server) or set its clock; the device re-checks alone",
    ),
    (
        r"Node password rejected",
        "a node of this name joined before with another password: restore "
        "/etc/rancher/node/password from out/devices/<host>/, or `kubectl delete node <host>` "
        "and delete its <host>.node-password.k3s secret in kube-system",
    ),
    (
        r"pifleet node retire|duplicate node name",
        "a re-flashed server's old etcd member is still in the cluster: run `pifleet node retire "
        "<host> --kubeconfig F` (cordon, drain, delete the Node and its node-password Secret); the "
        "device re-checks and joins by itself",
    ),
    (
        r"refusing cluster-init",
        "another server already runs this cluster: this card is a re-flashed first server; set "
        "cluster.initialized: true and rebuild (or re-personalize) it, so it joins as a server",
    ),
    (
        r"CA hash|does not match|CA mismatch|pinned",
        "the server's CA is not the one the token pins: wrong cluster.server, or the cluster was "
        "re-created or its CA rotated; take the current token (`pifleet token pin`) and rebuild",
    ),
    (
        r"\b401\b|rejected the token|Unauthorized",
        "the server does not accept this token: check it against the server's node-token (or "
        "agent-token); the device re-checks every few minutes, so fixing it on the server is enough",
    ),
    (
        r"not yet valid|clock|expired",
        "the device's clock disagrees with the server's certificate: give the site NTP, or check "
        "the server's certificate dates",
    ),
    (
        r"memory cgroup|cgroup_enable",
        "the kernel runs without the memory cgroup: cmdline.txt needs cgroup_enable=memory",
    ),
    (
        r"still importing air-gap images",
        "K3s is still importing the air-gap images (a slow card, e.g. a Pi 3's SD card): it goes on "
        "by itself; a faster card, or a longer agent.start_timeout, avoids the verdict",
    ),
    (
        r"failed to import air-gap images",
        "K3s could not import an air-gap tarball: check that k3s.airgap_images is the tarball of "
        "this K3s version and architecture, and rebuild",
    ),
    (
        r"own Node",
        "K3s's apiserver is up but this server's kubelet never registered its Node: read the K3s "
        "journal lines (--journal) for the kubelet's error, e.g. a bad cluster.kubelet_args",
    ),
    (
        r"state=start|never became ready|k3s.*(exited|failed)",
        "K3s started but never joined: read the K3s journal lines (--journal), e.g. a bad "
        "cluster.kubelet_args",
    ),
    (
        r"mDNS|only through NSS",
        "K3s resolves the server's name through /etc/hosts and DNS only, never mDNS (.local): "
        "put a DNS name or an IP address in cluster.server, or give the site's DNS that name",
    ),
    (
        r"resolve|route|unreachable|refused|timed out|waiting for the server",
        "the device cannot reach the server: check the site's network, DNS and that port 6443 of "
        "cluster.server is open from the device",
    ),
)


def read_report(target: Path) -> dict[str, Any] | None:
    """The agent's report from the boot partition of `target`, None when there is none:
    checked against SHAPE and with every string in it redacted."""
    if not target.exists():
        raise UserError(f"{target}: no such file or device")
    try:
        image = Image.open(target)
        data = image.boot.read(REPORT)
    except PermissionError:
        raise UserError(
            f"{target}: permission denied (reading a card needs sudo or the disk group)"
        ) from None
    if data is None:
        return None
    return checked_report(data, f"{target}: {REPORT} is damaged", Redactor(card_secrets(image)))


def checked_report(data: bytes, damaged: str, redactor: Redactor) -> dict[str, Any]:
    """`data` as a report of SHAPE, every string in it redacted; one line naming the key if not."""
    try:
        report = json.loads(data)
    except RecursionError:
        raise UserError(f"{damaged}: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError:
        raise UserError(f"{damaged} (not JSON)") from None
    if not isinstance(report, dict):
        raise UserError(f"{damaged} (not a JSON object)")
    cleaned: dict[str, Any] = _cleaned(report, redactor, damaged, 0)
    _check(cleaned, SHAPE, "", damaged)
    return cleaned


def card_secrets(image: Image) -> list[str]:
    """The token, node password and Wi-Fi keys the card holds, wherever the agent left them
    (boot partition before first boot, root filesystem after, as firstboot/secrets.py lists
    them); what cannot be read is skipped."""

    def places(secret: device.Secret) -> list[str]:
        first = _read(
            image.boot.read if secret.boot else image.root.read, "/" + secret.path.lstrip("/")
        )
        return [first] + ([_read(image.root.read, secret.kept)] if secret.kept else [])

    values = [text for secret in device.VALUES for text in places(secret)]
    configs = [text for secret in (*device.CLEANED, device.FIRSTRUN) for text in places(secret)]
    for directory in NETWORK_DIRS:
        with contextlib.suppress(PifleetError, OSError):
            names = image.root.listdir(directory)[:64]
            configs += [_read(image.root.read, f"{directory}/{name}") for name in names]
    found = [value.strip() for value in values]
    for text in configs:
        found += secrets_in_config(text)
    return [value for value in found if value]


def _read(reader: Callable[[str], bytes | None], path: str) -> str:
    with contextlib.suppress(PifleetError, OSError):
        data = reader(path)
        if data is not None and len(data) <= SECRET_MAX:
            return data.decode("utf-8", errors="replace")
    return ""


def _cleaned(value: Any, redactor: Redactor, damaged: str, depth: int) -> Any:
    """`value` with the redactor run over every string in it, keys too."""
    if depth > MAX_DEPTH:
        raise UserError(f"{damaged}: nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, str):
        return redactor.clean(value)
    if isinstance(value, list):
        if all(isinstance(item, str) for item in value):
            return redactor.lines(value)  # a private key over several lines goes whole
        return [_cleaned(item, redactor, damaged, depth + 1) for item in value]
    if isinstance(value, dict):
        return {
            redactor.clean(str(key)): _cleaned(item, redactor, damaged, depth + 1)
            for key, item in value.items()
        }
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, float):
        return "a fractional number"
    return _NAMES.get(type(value), type(value).__name__)


def _check(value: Any, shape: Shape, key: str, damaged: str) -> None:
    """Refuse, naming the key, a value that is not of the type the agent writes."""
    expected = shape if isinstance(shape, type) else type(shape)
    if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
        raise UserError(f"{damaged}: {key} is {_kind(value)}, not {_NAMES[expected]}")
    found: Any = value
    if isinstance(shape, dict):
        for name, inner in shape.items():
            if found.get(name) is not None:
                _check(found[name], inner, f"{key}.{name}" if key else name, damaged)
    elif isinstance(shape, list):
        for index, item in enumerate(found):
            _check(item, shape[0], f"{key}[{index}]", damaged)


def _clock(stamp: str) -> str:
    """'2026-11-25T09:14:03Z' -> '2026-11-25 09:14:03'."""
    return stamp.replace("T", " ").rstrip("Z")


def story(report: dict[str, Any]) -> list[str]:
    """The report as a few lines a person reads: where it got to, what failed, how often."""
    node = report.get("node") or "?"
    timeline = report.get("timeline") or []
    reached = [t.get("state") for t in timeline]
    joined = report.get("joined")
    if joined:
        lines = [f"{node}: joined as {joined.get('node')} at {_clock(joined.get('at') or '')}"]
    else:
        state = report.get("state") or "?"
        at = next((t.get("at") or "" for t in reversed(timeline) if t.get("state") == state), "")
        lines = [f"{node}: reached {state} at {_clock(at)}" if at else f"{node}: state {state}"]
    if any(s in reached for s in ("configure", "start", "cleanup", "done")):
        lines.append(f"  server CA pinned for {report.get('server', '?')}")
    if report.get("fsync"):  # a server's disk as etcd sees it (firstboot/fsyncprobe.py)
        lines.append(f"  fsync: {report['fsync']}")
    failure = report.get("last_failure")
    if failure and not joined:
        count = failure.get("count") or 1
        times = f"{count} times since {_clock(failure.get('first') or '')}, " if count > 1 else ""
        lines.append(
            f"  failed in {failure.get('state')}: {failure.get('reason')} "
            f"({times}last at {_clock(failure.get('last') or '')})"
        )
    elif report.get("detail") and not joined:
        lines.append(f"  last: {report['detail']}")
    lines += [f"  warning: {text}" for text in report.get("warnings") or []]
    return lines


def remedies(report: dict[str, Any]) -> list[str]:
    failure = report.get("last_failure")
    if report.get("joined") or not failure:
        return []
    reason = f"state={failure.get('state')} {failure.get('reason')}"
    return [advice for pattern, advice in REMEDIES if re.search(pattern, reason, re.IGNORECASE)][:1]


def command(args: argparse.Namespace) -> int:
    target = Path(args.target)
    report = read_report(target)
    if report is None:
        print(f"{target}: no {REPORT} on the boot partition: the first-boot agent never ran here")
        return 1
    if args.json:
        # ASCII JSON escapes every control character but DEL (0x7f) in its strings
        print(json.dumps(report, indent=2).replace("\x7f", "\\u007f"))
        return 0 if report.get("joined") else 1
    for line in story(report):
        print(inert(line))
    for advice in remedies(report):
        print(f"  what to do: {advice}")
    if args.journal:
        print("  journal (last lines, secrets removed):")
        for line in report.get("journal") or []:
            print(f"    {inert(line)}")
    return 0 if report.get("joined") else 1
