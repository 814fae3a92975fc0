"""systemctl and journalctl, the only way the agent manages K3s.

The commands can be replaced through PIFLEET_SYSTEMCTL / PIFLEET_JOURNALCTL,
which the host-side tests use to run the agent under a temporary root where no
systemd exists.
"""

from __future__ import annotations

import os
import subprocess
from typing import List

from firstboot.paths import Root


class ServiceError(Exception):
    pass


class ServiceManager:
    def __init__(self, root: Root) -> None:
        self.root = root
        self.systemctl = os.environ.get("PIFLEET_SYSTEMCTL", "systemctl")
        self.journalctl = os.environ.get("PIFLEET_JOURNALCTL", "journalctl")

    def _env(self) -> dict:  # type: ignore[type-arg]
        return dict(os.environ, PIFLEET_ROOT=str(self.root.root))

    def _systemctl(self, *args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        try:
            return subprocess.run(
                [self.systemctl, *args],
                capture_output=True,
                text=True,
                env=self._env(),
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceError("systemctl " + " ".join(args) + ": " + str(exc)) from None

    def _checked(self, *args: str) -> None:
        proc = self._systemctl(*args)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise ServiceError(
                "systemctl "
                + " ".join(args)
                + " failed: "
                + (detail[-1] if detail else str(proc.returncode))
            )

    def daemon_reload(self) -> None:
        self._checked("daemon-reload")

    def enable_and_start(self, unit: str) -> None:
        self._checked("enable", unit)
        self._checked("start", "--no-block", unit)

    def state(self, unit: str) -> str:
        """active, activating, failed, inactive, ... as systemctl is-active says."""
        return self._systemctl("is-active", unit).stdout.strip() or "unknown"

    def journal(self, unit: str, since: float) -> List[str]:
        """The unit's log lines since `since` (seconds since 1970), message text only."""
        try:
            proc = subprocess.run(
                [
                    self.journalctl,
                    "-u",
                    unit,
                    "-o",
                    "cat",
                    "--no-pager",
                    "--since",
                    "@" + str(int(since)),
                ],
                capture_output=True,
                text=True,
                env=self._env(),
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            return []
        return proc.stdout.splitlines()
