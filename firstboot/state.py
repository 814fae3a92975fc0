"""The agent's persisted progress: /var/lib/pifleet/state.json, written atomically.

A power cut at any moment leaves either the previous or the next state on
disk; the next boot resumes from it. No secret is ever stored here.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from firstboot.paths import Root, write_atomic

STATE_DIR = "/var/lib/pifleet"
STATE_FILE = STATE_DIR + "/state.json"
JOINED_MARKER = STATE_DIR + "/joined"
# The join's states in order, each with what the console says while it runs; "done" follows.
STATES = (
    ("load", "reading the join config and checking the device"),
    ("network", "waiting for the network"),
    ("clock", "checking the clock"),
    ("verify", "checking the server's CA and proving the token"),
    ("configure", "writing the K3s configuration"),
    ("start", "starting K3s"),
    ("cleanup", "removing join secrets"),
)
ORDER = tuple(name for name, _ in STATES)


class StateError(Exception):
    """The state directory cannot be written; the message says where and why."""


@dataclass
class JoinState:
    state: str = "load"
    node_name: Optional[str] = None
    ca_hash: Optional[str] = None  # sha256 of the pinned CA bundle (public information)
    config_seed: Optional[str] = None  # a server: the seed its config.yaml was written for
    failed_state: Optional[str] = None
    failed_reason: Optional[str] = None
    boots: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)


class StateStore:
    def __init__(self, root: Root) -> None:
        self.path = root(STATE_FILE)
        self.marker = root(JOINED_MARKER)

    def load(self) -> JoinState:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return JoinState()
        except (OSError, ValueError):
            # Unreadable state: start over; every state's work is idempotent.
            return JoinState()
        known = set(JoinState.__dataclass_fields__)
        return JoinState(**{k: v for k, v in raw.items() if k in known})

    def save(self, state: JoinState) -> None:
        data = (json.dumps(asdict(state), indent=2, sort_keys=True) + "\n").encode()
        try:
            write_atomic(self.path, data, 0o600)
        except OSError as exc:
            raise StateError(
                "cannot write " + str(self.path) + ": " + (exc.strerror or str(exc))
            ) from None

    def enter(self, state: JoinState, name: str) -> None:
        """Record that `name` is the state to run (now and after a power cut)."""
        state.state = name
        state.history = ([*state.history, {"state": name, "at": int(time.time())}])[-50:]
        self.save(state)

    def mark_joined(self) -> None:
        try:
            write_atomic(self.marker, b"joined\n", 0o644)
        except OSError as exc:
            raise StateError(
                "cannot write " + str(self.marker) + ": " + (exc.strerror or str(exc))
            ) from None


def fault(point: str, state: str) -> None:
    """Fault injection for the power-cut tests: PIFLEET_FAULT=kill-<after|before>:<state>."""
    if os.environ.get("PIFLEET_FAULT") == "kill-" + point + ":" + state:
        os.kill(os.getpid(), signal.SIGKILL)
