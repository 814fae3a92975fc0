"""One device's disk across power cycles, against one running test server: the boot tests'
power cuts (QMP `quit` at a stage of the boot, no clean shutdown) and clean power-ons until
the node joins, all through builder/qemu/power.py's public `power_on`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builder.disk.image import Image
from builder.qemu.console import BootResult, Stage
from builder.qemu.power import Guest, Hooks, power_on, prepare
from builder.qemu.vm import VM
from builder.testserver.server import K3sTestServer
from builder.util.secret import Secret

BOOT_TIMEOUT = 900.0  # as the other boot tests: TCG on a loaded 2-core host is slow


@dataclass
class Device:
    """One device's disk across power cycles, against one running test server. Every boot
    follows on through an agent verdict or a failed cloud-init stage (a fault test looks at
    what the device does next) and records what it read in `boots`."""

    image: Path
    work: Path
    server: K3sTestServer
    guest: Guest = field(init=False)
    boots: list[BootResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        token = Secret(self.server.mint_token())
        self.guest = prepare(Image.open(self.image), self.server, token, self.work)

    @property
    def disk(self) -> Path:
        return self.guest.disk

    def boot(
        self, until: Stage, *, qemu_args: tuple[str, ...] = (),
        during: Callable[[VM, BootResult, str], None] | None = None, clean: bool = False,
    ) -> BootResult:  # fmt: skip
        """Power on and follow the console until `until`; then pull the plug (or, with
        `clean`, power off so the disk can be read)."""
        hooks = Hooks(tolerate_failures=True, tolerate_cloud_init=True, qemu_args=qemu_args,
                      during=during, cut_power=not clean)  # fmt: skip
        log = self.work / f"console-{len(self.boots) + 1}.log"
        result = power_on(self.guest, until, timeout=BOOT_TIMEOUT, hooks=hooks, console_log=log)
        self.boots.append(result)
        return result

    def cut_power_in(self, state: str) -> BootResult:
        return self.boot(Stage.state(state))

    def until_joined(
        self, *, qemu_args: tuple[str, ...] = (),
        during: Callable[[VM, BootResult, str], None] | None = None,
    ) -> BootResult:  # fmt: skip
        return self.boot(Stage.JOINED, qemu_args=qemu_args, during=during, clean=True)
