"""`pifleet diagnose /dev/sdX|IMAGE`: the story a pulled card tells, and what to do about it.

The first-boot agent keeps `pifleet/report.json` on the boot partition (see
firstboot/card.py): where it got to, its last failure with how often and since
when, and the last journal lines, secrets removed. This reads it rootlessly
(mtools on the card or image, no mount) and prints the story, one remedy line
per known failure, and with `--journal` the journal lines.

Exit 0 when the device joined, 1 when it did not (or never ran), 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from builder.disk.image import Image
from builder.util.errors import UserError

REPORT = "/pifleet/report.json"

# (what the failure reason says, what to do about it); the first match wins.
REMEDIES: tuple[tuple[str, str], ...] = (
    (
        r"Node password rejected",
        "a node of this name joined before with another password: restore "
        "/etc/rancher/node/password from out/devices/<host>/, or `kubectl delete node <host>` "
        "and delete its <host>.node-password.k3s secret in kube-system",
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
        r"state=start|never became ready|k3s.*(exited|failed)",
        "K3s started but never joined: read the K3s journal lines (--journal), e.g. a bad "
        "cluster.kubelet_args",
    ),
    (
        r"resolve|route|unreachable|refused|timed out|waiting for the server",
        "the device cannot reach the server: check the site's network, DNS and that port 6443 of "
        "cluster.server is open from the device",
    ),
)


def read_report(target: Path) -> dict[str, Any] | None:
    """The agent's report from the boot partition of `target`, None when there is none."""
    if not target.exists():
        raise UserError(f"{target}: no such file or device")
    try:
        data = Image.open(target).boot.read(REPORT)
    except PermissionError:
        raise UserError(
            f"{target}: permission denied (reading a card needs sudo or the disk group)"
        ) from None
    if data is None:
        return None
    try:
        report = json.loads(data)
    except ValueError:
        raise UserError(f"{target}: {REPORT} is damaged (not JSON)") from None
    if not isinstance(report, dict):
        raise UserError(f"{target}: {REPORT} is damaged (not a JSON object)")
    return report


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
        lines = [f"{node}: joined as {joined.get('node')} at {_clock(joined.get('at', ''))}"]
    else:
        state = report.get("state", "?")
        at = next((t.get("at", "") for t in reversed(timeline) if t.get("state") == state), "")
        lines = [f"{node}: reached {state} at {_clock(at)}" if at else f"{node}: state {state}"]
    if any(s in reached for s in ("configure", "start", "cleanup", "done")):
        lines.append(f"  server CA pinned for {report.get('server', '?')}")
    failure = report.get("last_failure")
    if failure and not joined:
        count = int(failure.get("count", 1))
        times = f"{count} times since {_clock(failure.get('first', ''))}, " if count > 1 else ""
        lines.append(
            f"  failed in {failure.get('state')}: {failure.get('reason')} "
            f"({times}last at {_clock(failure.get('last', ''))})"
        )
    elif report.get("detail") and not joined:
        lines.append(f"  last: {report['detail']}")
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
        print(json.dumps(report, indent=2))
        return 0 if report.get("joined") else 1
    for line in story(report):
        print(line)
    for advice in remedies(report):
        print(f"  what to do: {advice}")
    if args.journal:
        print("  journal (last lines, secrets removed):")
        for line in report.get("journal") or []:
            print(f"    {line}")
    return 0 if report.get("joined") else 1
