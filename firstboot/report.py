"""How the agent tells the world where it is: one console line per event, `STATUS=` to
systemd, and structured journal fields (PIFLEET_STATE) when python3-systemd is present.

Console line formats are a contract (the QEMU boot test parses them):
  pifleet-firstboot: state=<name> <text>
  pifleet-firstboot: joined node=<name>
  pifleet-firstboot: failed state=<name> reason=<text>
  pifleet-firstboot: warning: <text>
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, List, Optional

try:  # python3-systemd, when the image ships it
    from systemd import daemon as _sd_daemon
    from systemd import journal as _sd_journal
except ImportError:  # pragma: no cover - depends on the image
    _sd_daemon = None
    _sd_journal = None

PREFIX = "pifleet-firstboot:"


def notify(message: str) -> None:
    """sd_notify: through python3-systemd if present, else straight to $NOTIFY_SOCKET."""
    if _sd_daemon is not None:
        _sd_daemon.notify(message)
        return
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            pass  # systemd went away (shutdown): nothing to tell


class Reporter:
    def __init__(self, stream=None) -> None:  # type: ignore[no-untyped-def]
        self.stream = stream or sys.stderr
        # Objects with on_event(kind, state, text), e.g. the card report on the boot partition.
        self.listeners: List[Any] = []

    def _tell(self, kind: str, state: str, text: str) -> None:
        for listener in self.listeners:
            listener.on_event(kind, state, text)

    def _line(self, text: str, state: Optional[str] = None, priority: int = 6) -> None:
        self.stream.write(PREFIX + " " + text + "\n")
        self.stream.flush()
        if _sd_journal is not None and state is not None:
            _sd_journal.send(
                text, PRIORITY=priority, PIFLEET_STATE=state, SYSLOG_IDENTIFIER="pifleet-firstboot"
            )

    def state(self, name: str, text: str) -> None:
        self._line("state=" + name + " " + text, name)
        notify("STATUS=" + name + ": " + text)
        self._tell("state", name, text)

    def progress(self, name: str, text: str) -> None:
        """A detail within a state (waiting, retrying): status only, plus a console line."""
        self._line(name + ": " + text, name)
        notify("STATUS=" + name + ": " + text)
        self._tell("progress", name, text)

    def warning(self, text: str) -> None:
        self._line("warning: " + text, "warning", priority=4)
        notify("STATUS=warning: " + text)
        self._tell("warning", "warning", text)

    def joined(self, node: str) -> None:
        # The card first: whoever sees the console line may cut the power at once.
        self._tell("joined", "done", node)
        self._line("joined node=" + node, "done")
        notify("STATUS=joined as " + node)

    def failed(self, state: str, reason: str) -> None:
        self._tell("failed", state, reason)  # the card first, as in joined()
        self._line("failed state=" + state + " reason=" + reason, state, priority=3)
        notify("STATUS=failed in " + state + ": " + reason)

    def ready(self) -> None:
        notify("READY=1")
