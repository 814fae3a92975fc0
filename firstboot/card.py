"""The card's story: `pifleet/report.json` on the boot partition, readable on any laptop.

A device with no screen and no network can still be diagnosed: pull the card,
and `pifleet diagnose` (or any FAT reader) shows where the agent got to, the
last failure with how often and since when, and the last journal lines of the
agent and K3s. Everything in it goes through the `Redactor` first; the file is
rewritten in place and kept small (at most JOURNAL_LINES lines of LINE_MAX characters).
In place means the FAT's directory entry and allocation table never change after the first
write (a FAT rename is not safe from power cuts: firstboot/paths.py), so a power cut can at
worst tear the story: the next boot then starts a new one, and `pifleet diagnose` says the
report is damaged. The file is SLOT bytes or a multiple of it, the JSON padded with spaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from firstboot import fsyncprobe
from firstboot.paths import write_in_place
from firstboot.redact import Redactor

REPORT_NAME = "report.json"
JOURNAL_LINES = 200
LINE_MAX = 300
WARNINGS_MAX = 8  # the card keeps the latest distinct warnings
UNITS = ("pifleet-firstboot", "k3s-agent", "k3s")
SLOT = 64 * 1024  # report.json's size: room for the journal, so it rarely grows


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def journal_tail(lines: int = JOURNAL_LINES) -> List[str]:
    """The last `lines` journal lines of the agent and K3s units ([] without journalctl)."""
    command = [
        os.environ.get("PIFLEET_JOURNALCTL", "journalctl"),
        "--no-pager",
        "-o",
        "short-iso",
        "-n",
        str(lines),
    ]
    for unit in UNITS:
        command += ["-u", unit]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return done.stdout.splitlines()[-lines:]


class CardReport:
    """Listens to the agent's `Reporter` and keeps `report.json` in `directory` current."""

    def __init__(self, directory: Path, node: str, server: str, redactor: Redactor) -> None:
        self.path = directory / REPORT_NAME
        self.redactor = redactor
        self.data: Dict[str, Any] = {
            "version": 1,
            "node": node,
            "server": redactor.clean(server),
            "state": "load",
            "updated": _now(),
            "timeline": [],
            "last_failure": None,
            "joined": None,
            "journal": [],
        }
        with contextlib.suppress(OSError, ValueError):
            old = json.loads(self.path.read_text())
            if isinstance(old, dict) and old.get("version") == 1:
                self.data.update(old)  # the story goes on across reboots

    def on_event(self, kind: str, state: str, text: str) -> None:
        """One agent event: kind is state, progress, warning, failed or joined."""
        now = _now()
        data = self.data
        data["updated"] = now
        text = self.redactor.clean(text)[:LINE_MAX]
        if (kind == "state" and state != data["state"]) or not data["timeline"]:
            data["timeline"].append({"state": state, "at": now})
        if kind in ("state", "failed", "joined"):
            data["state"] = "done" if kind == "joined" else state
        if kind == "progress":
            data["detail"] = text
            if state == "load" and text.startswith("node name "):
                data["node"] = text[len("node name ") :]
            if text.startswith(fsyncprobe.PREFIX):  # a server's disk, kept apart from detail
                data["fsync"] = text[len(fsyncprobe.PREFIX) :]
        if kind == "failed":
            self._failure(state, text, now)
        if kind == "warning" and text not in data.setdefault("warnings", []):
            data["warnings"] = (data["warnings"] + [text])[-WARNINGS_MAX:]
        if kind == "joined":
            data["joined"] = {"node": text, "at": now}
        if kind in ("failed", "joined"):
            data["journal"] = [line[:LINE_MAX] for line in self.redactor.lines(journal_tail())]
        self.write()

    def _failure(self, state: str, reason: str, now: str) -> None:
        last: Optional[Dict[str, Any]] = self.data["last_failure"]
        if last is not None and last.get("reason") == reason and last.get("state") == state:
            last["count"] = int(last.get("count", 1)) + 1
            last["last"] = now
        else:
            self.data["last_failure"] = {
                "state": state, "reason": reason, "count": 1, "first": now, "last": now
            }  # fmt: skip

    def write(self) -> None:
        # A read-only or full boot partition must never stop the join.
        with contextlib.suppress(OSError):
            text = json.dumps(self.data, indent=1).encode() + b"\n"
            size = -(-len(text) // SLOT) * SLOT
            write_in_place(self.path, text + b" " * (size - len(text)))
