"""Reading a boot's serial console: the milestones, the agent's states and verdict, cloud-init's
result, and where a power-on stops following it (a `Stage`: the boot passed, the node joined,
the agent entered a state, or any test of what was read so far).

One reader for every boot: `pifleet boot-test` follows a console until the boot passed, and
the boot tests until the stage they act at (to cut the power in an agent state, say).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from builder.qemu.vm import ConsoleLine

MILESTONES = (
    ("kernel started", re.compile(r"Booting Linux on|Linux version \d")),
    ("root filesystem found", re.compile(r"pifleet initramfs: root is")),
    ("systemd started", re.compile(r"systemd\[1\]: |Welcome to ")),
    # What boot-test changed for QEMU (builder/bases/initramfs.py INIT), one each.
    ("under QEMU: {}", re.compile(r"pifleet initramfs: under QEMU: (.*)")),
    ("cloud-init started", re.compile(r"Cloud-init v\. \S+ running 'init-local'")),
    ("cloud-init finished", re.compile(r"Cloud-init v\. \S+ finished at")),
)
CLOUD_INIT_DONE = re.compile(r"Cloud-init v\. \S+ finished at")
# systemd's console line for a failed cloud-init stage (the seed or a module went wrong)
CLOUD_INIT_FAILED = re.compile(r"Failed to start (cloud-init|cloud-config|cloud-final)\S*")
AGENT_STATE = re.compile(r"pifleet-firstboot: state=(\w+)")
AGENT_JOINED = re.compile(r"pifleet-firstboot: joined node=(\S+)")
AGENT_FAILED = re.compile(r"pifleet-firstboot: failed state=(\w+) reason=(.*)")
REBOOTING = re.compile(r"reboot: Restarting system")
Milestone = Callable[[str, float], None]  # (name, seconds since QEMU started)
LOGIN = re.compile(r"^(\S+) login:")


@dataclass
class BootResult:
    joined: bool = False
    node: str | None = None
    failure: str | None = None
    milestones: list[tuple[str, float]] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)  # `failed` lines, with tolerate_failures
    states: list[str] = field(default_factory=list)  # every agent state the console showed
    login_hostname: str | None = None
    cloud_init: str | None = None  # the "finished" line
    cloud_init_errors: list[str] = field(default_factory=list)  # failed cloud-init stages
    console: list[str] = field(default_factory=list)
    reboots: int = 0  # the guest restarted itself this many times (each a new QEMU)
    cloud_init_expected: bool = True  # False for an image without cloud-init (systemd format)
    peak_rss_kib: int = 0
    overlay: Path | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """The node joined and cloud-init finished without a failed stage."""
        return self.failure is None

    def tail(self, n: int = 50) -> list[str]:
        return self.console[-n:]


def done(result: BootResult) -> bool:
    """The node joined, and cloud-init (where the image has it) finished."""
    return result.joined and (result.cloud_init is not None or not result.cloud_init_expected)


@dataclass(frozen=True)
class Stage:
    """Where a power-on stops following the console: `reached(result)` is asked after each line.
    `Stage.PASSED`, `Stage.JOINED`, `Stage.state("verify")`, or any name and test; `a | b`
    stops at whichever comes first."""

    name: str
    reached: Callable[[BootResult], bool]
    PASSED: ClassVar[Stage]  # the node joined, and cloud-init finished where the image has it
    JOINED: ClassVar[Stage]  # the agent said it joined (cloud-init may still be running)

    @staticmethod
    def state(name: str) -> Stage:
        """The agent has just entered state `name` (its latest state line names it)."""
        return Stage(f"agent: {name}", lambda r: bool(r.states) and r.states[-1] == name)

    def __or__(self, other: Stage) -> Stage:
        return Stage(f"{self.name} | {other.name}", lambda r: self.reached(r) or other.reached(r))


Stage.PASSED = Stage("passed", done)
Stage.JOINED = Stage("joined", lambda r: r.joined)


def follow(
    lines: Iterable[ConsoleLine],
    result: BootResult,
    on_milestone: Milestone | None = None,
    tolerate_failures: bool = False,
    until: Stage = Stage.PASSED,
    on_line: Callable[[str], None] | None = None,
    tolerate_cloud_init: bool = False,
) -> None:
    """Read the console into `result` until `until` is reached, the agent failed or a cloud-init
    stage failed (a failed stage fails the boot whatever follows, so waiting on is useless).
    With `tolerate_failures` an agent verdict is recorded and followed past (with
    `tolerate_cloud_init`, a failed cloud-init stage too); `on_line` is called with each line
    once it is read (a test's action at a point of the boot)."""
    seen = {name for name, _ in result.milestones}

    def mark(name: str, seconds: float) -> None:
        if name not in seen:
            seen.add(name)
            result.milestones.append((name, seconds))
            if on_milestone is not None:
                on_milestone(name, seconds)

    # Done when the node joined and cloud-init finished (its final stage may end after the
    # agent, which waits only for the config stage), or as soon as the agent fails.
    for line in lines:
        result.console.append(line.text)
        for name, pattern in MILESTONES:
            if (found := pattern.search(line.text)) is not None:
                mark(name.format(*(g.strip() for g in found.groups())), line.seconds)
        if CLOUD_INIT_DONE.search(line.text):
            result.cloud_init = line.text.strip()
        if CLOUD_INIT_FAILED.search(line.text):
            result.cloud_init_errors.append(line.text.strip())
            if not tolerate_cloud_init:
                result.failure = verdict(result, 0.0, running=True)  # decided: stop waiting now
                break
        if (state := AGENT_STATE.search(line.text)) is not None:
            result.states.append(state.group(1))
            mark(f"agent: {state.group(1)}", line.seconds)
        if REBOOTING.search(line.text):
            result.reboots += 1
            mark(f"reboot {result.reboots}", line.seconds)
            break
        if (login := LOGIN.search(line.text)) is not None:
            result.login_hostname = login.group(1)
        if (failed := AGENT_FAILED.search(line.text)) is not None:
            if not tolerate_failures:
                result.failure = f"agent failed in {failed.group(1)}: {failed.group(2)}"
                break
            result.verdicts.append(line.text.strip())
            mark(f"agent failed: {failed.group(1)}", line.seconds)
        elif (joined := AGENT_JOINED.search(line.text)) is not None:
            result.joined, result.node = True, joined.group(1)
            mark("joined", line.seconds)
        if on_line is not None:
            on_line(line.text)
        if until.reached(result):
            break


def verdict(result: BootResult, timeout: float, running: bool) -> str | None:
    """Why the boot does not count as a pass, or None when it does."""
    if result.cloud_init_errors:
        return f"cloud-init failed: {result.cloud_init_errors[0]}"
    if done(result):
        return None
    waiting = "cloud-init to finish" if result.joined else "the node to join"
    if not running:
        return f"QEMU exited while waiting for {waiting}"
    stuck = still_starting(result.console)
    named = "; ".join(f"{unit} {HANGS.get(unit, 'never finished')}" for unit in stuck[-3:])
    return f"timed out after {timeout:.0f} s waiting for {waiting}" + (
        f" ({named})" if named else ""
    )


# Units of Pi images that wait for ever where a seed did not do its job.
HANGS = {
    "userconfig.service": "is still waiting for a user to be set on tty8 (userconf-pi: no "
    "seed renamed the default user)",
}
_STARTING = re.compile(r"\bStarting (\S+\.service)")
_ENDED = re.compile(r"\b(?:Finished|Started|Stopped|Failed to start|Skipped) (\S+\.service)")


def still_starting(console: list[str]) -> list[str]:
    """Services systemd said it was starting and never said it finished, in order."""
    pending: dict[str, None] = {}
    for line in console:
        for unit in _STARTING.findall(line):
            pending[unit] = None
        for unit in _ENDED.findall(line):
            pending.pop(unit, None)
    return list(pending)
