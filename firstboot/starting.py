"""Starting K3s and waiting until it has joined: the unit is active (K3s's sd_notify READY),
and on a server its own Node is Ready as well (firstboot/servernode.py); the K3s log lines the
agent knows (firstboot/texts.py) are final verdicts at once, and past the start timeout the
verdict quotes K3s's last lines."""

from __future__ import annotations

import time
from typing import Callable, List, Optional

from firstboot import airgap
from firstboot.paths import Root
from firstboot.retry import Backoff, Terminal
from firstboot.service import ServiceError, ServiceManager
from firstboot.texts import KNOWN_FAILURES

# What else must hold after READY before the device has joined: None when it does, else
# what is still awaited (a server's own Node).
Joined = Callable[[], Optional[str]]


def known_failure(journal: List[str], node: str) -> Optional[str]:
    for needle, message in KNOWN_FAILURES:
        if any(needle in line for line in journal):
            return message.format(node=node)
    return None


def timeout_verdict(journal: List[str], unit: str, status: str, timeout: float) -> str:
    tail = " | ".join(line.strip()[:200] for line in journal[-3:]) or "(no log lines)"
    return (
        "K3s has not joined within " + str(int(timeout)) + " s (" + unit + " is " + status
        + "); last K3s log lines: " + tail
    )  # fmt: skip


def start(
    services: ServiceManager,
    unit: str,
    node: str,
    timeout: float,
    backoff: Backoff,
    progress: Callable[[str], None],
    joined: Optional[Joined] = None,
    root: Optional[Root] = None,
) -> None:
    """Start `unit` and return once the device has joined; Terminal with the verdict (the
    air-gap import's, firstboot/airgap.py, when `root` is given and that is the reason)."""
    since = time.time() - 5
    try:
        services.daemon_reload()
        services.enable_and_start(unit)
    except ServiceError as exc:
        raise Terminal(str(exc)) from None
    last = ""
    deadline = time.monotonic() + timeout
    while True:
        status = services.state(unit)
        awaited = (joined() if joined else None) if status == "active" else None
        if status == "active" and awaited is None:
            return
        journal = services.journal(unit, since)
        verdict = known_failure(journal, node)
        if verdict:
            raise Terminal(verdict)
        if time.monotonic() >= deadline:
            late = airgap.verdict(root, journal, timeout) if root else None
            raise Terminal(
                late
                or awaited_verdict(awaited, timeout)
                or timeout_verdict(journal, unit, status, timeout)
            )
        text = awaited or "waiting for K3s to register the node (" + unit + " is " + status + ")"
        if airgap.importing(journal):
            text = "K3s is importing air-gap images (" + str(airgap.importing(journal)) + ")"
        if text != last:
            progress(text)
            last = text
        backoff.wait()


def awaited_verdict(awaited: Optional[str], timeout: float) -> Optional[str]:
    if awaited is None:
        return None
    return "K3s is up but has not joined within " + str(int(timeout)) + " s: " + awaited
