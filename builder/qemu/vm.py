"""Booting an image under QEMU's `-M virt` and following its serial console.

The disk is a qcow2 overlay (the image under test is never written), the
network is user-mode (the guest reaches host services on 127.0.0.1 at
10.0.2.2), and QEMU is driven through QMP: a clean `quit` at the end, and a
kill only when QMP no longer answers. Every QEMU process ends with the `VM`
context, also on Ctrl-C or a test failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from builder.qemu.board import BOARD_WORDS
from builder.util.errors import BuildError, UserError
from builder.util.run import require_tool

log = logging.getLogger("pifleet.vm")

# Kernel hardening that costs most under emulation and proves nothing a boot test checks, off
# on QEMU's -append only (the image's cmdline.txt is unchanged; a device keeps both): on arm64
# KASLR forces page-table isolation (KPTI), so every entry from user space switches page tables
# and QEMU's TCG flushes its TLB each time; the Spectre and SSB mitigations add firmware calls
# and barriers on the same path. One arm64 boot measured here: joined 79 s -> 42 s, QEMU's CPU
# time 133 s -> 63 s (bench/boot.py prints the boot figures). armhf keeps its kernel's
# defaults: 32-bit ARM has no KASLR (`nokaslr` would be an unknown word, handed to init), and
# mitigations=off measured 140 s -> 136 s of CPU, within the noise.
EMULATION_WORDS = {"arm64": ("nokaslr", "mitigations=off")}


def emulation_change(arch: str) -> str | None:
    """The timeline's line for EMULATION_WORDS, or None where there are none."""
    words = EMULATION_WORDS.get(arch)
    if not words:
        return None
    return (
        "kernel hardening off for speed under emulation (KASLR, which forces page-table "
        "isolation, and the CPU-bug mitigations): " + " ".join(words)
    )


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


@dataclass(frozen=True)
class Machine:
    arch: str
    qemu: str
    cpu: str
    console: str  # the serial device the kernel sees
    memory: int  # MiB
    board: str = "virt"  # QEMU's -M: virt, or a Raspberry Pi board (builder/qemu/board.py)
    cpus: int = 2
    serial: tuple[str, ...] = ("-serial", "stdio")


MACHINES = {
    "arm64": Machine("arm64", "qemu-system-aarch64", "cortex-a72", "ttyAMA0", 1536),
    "armhf": Machine("armhf", "qemu-system-arm", "cortex-a15", "ttyAMA0", 1024),
}
# The boards' own CPUs; exactly 1 GiB and 4 CPUs, or QEMU 7.2 refuses them.
BOARD_MACHINES = {
    "raspi3b": Machine("arm64", "qemu-system-aarch64", "", "ttyS1", 1024, "raspi3b", 4,
                       ("-serial", "null", "-serial", "stdio")),  # the mini UART is the console
    "raspi2b": Machine("armhf", "qemu-system-arm", "", "ttyAMA0", 1024, "raspi2b", 4),
}  # fmt: skip
BOARD_MAC = "b8:27:eb:50:1f:07"  # a Raspberry Pi Foundation address: the interface is eth0


@dataclass(frozen=True)
class ConsoleLine:
    seconds: float  # since QEMU started
    text: str


def kernel_command_line(cmdline_txt: str, machine: Machine) -> str:
    """cmdline.txt adapted to QEMU: the console on the virt machine's UART, eth0 naming, the
    kernel hardening that only slows emulation off (EMULATION_WORDS), a board's words."""
    words = []
    for word in cmdline_txt.split():
        if word.startswith("console="):
            continue
        words.append(word)
    # net.ifnames=0: the NIC is eth0, as on a Raspberry Pi, so the seed's network config applies.
    board = () if machine.board == "virt" else BOARD_WORDS
    speed = [word for word in EMULATION_WORDS.get(machine.arch, ()) if word not in words]
    return " ".join([f"console={machine.console},115200", *words, "net.ifnames=0", *speed, *board])


class VM:
    def __init__(
        self,
        machine: Machine,
        disk: Path,
        kernel: Path,
        initrd: Path | None,
        append: str,
        console_log: Path,
        smp: int | None = None,
        extra: tuple[str, ...] = (),
        network: tuple[str, ...] = (),
        since: float | None = None,
        modules: Path | None = None,
        dtb: Path | None = None,
    ) -> None:
        self.machine = machine
        self.disk = disk
        self.kernel = kernel
        self.initrd = initrd
        self.append = append
        self.console_log = console_log
        self.smp = smp or machine.cpus
        self.dtb = dtb  # a board's device tree
        self.extra = extra  # more QEMU arguments, e.g. ("-rtc", "base=1970-01-01")
        # Replaces the user-mode NIC, e.g. a socket network shared by two guests (-netdev socket)
        self.network = network or (
            "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0,romfile=",
        )  # fmt: skip
        # A reboot is a new QEMU (-no-reboot): `since` is the first one's start (time.monotonic),
        # which console times count from; its console log is appended to, not replaced.
        self.since = since
        self.modules = modules  # a read-only second disk: the supplied kernel's modules
        self._control = Path(tempfile.mkdtemp(prefix="pifleet-qmp-"))  # short: AF_UNIX paths
        self.qmp_socket = self._control / "qmp.sock"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: queue.Queue[ConsoleLine | None] = queue.Queue()
        self._started = 0.0
        self.peak_rss_kib = 0

    def argv(self) -> list[str]:
        m = self.machine
        if m.board != "virt":
            return self._board_argv()
        argv = [
            m.qemu,
            "-M", "virt",
            "-cpu", m.cpu,
            "-smp", str(self.smp),
            "-m", str(m.memory),
            "-accel", "tcg,thread=multi",
            "-display", "none",
            "-monitor", "none",
            "-serial", "stdio",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
            "-kernel", str(self.kernel),
            "-append", self.append,
            "-drive", f"if=none,id=hd0,file={self.disk},format=qcow2,discard=unmap",
            "-device", "virtio-blk-pci,drive=hd0",
            *self.network,
            "-device", "virtio-rng-pci",
            "-no-reboot",
        ]  # fmt: skip
        if self.initrd is not None:
            argv += ["-initrd", str(self.initrd)]
        if self.modules is not None:
            argv += [
                "-drive", f"if=none,id=modules,file={self.modules},format=raw,readonly=on",
                "-device", "virtio-blk-pci,drive=modules",
            ]  # fmt: skip
        return argv + list(self.extra)

    def _board_argv(self) -> list[str]:
        """A Raspberry Pi board: the image is its SD card, Ethernet is on USB."""
        m = self.machine
        argv = [
            m.qemu, "-M", m.board, "-smp", str(self.smp), "-m", str(m.memory),
            "-accel", "tcg,thread=multi", "-display", "none", "-monitor", "none", *m.serial,
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
            "-kernel", str(self.kernel), "-append", self.append,
            "-drive", f"if=sd,file={self.disk},format=qcow2",
            "-netdev", "user,id=net0", "-device", f"usb-net,netdev=net0,mac={BOARD_MAC}",
            "-no-reboot",
        ]  # fmt: skip
        if self.dtb is not None:
            argv += ["-dtb", str(self.dtb)]
        if self.initrd is not None:
            argv += ["-initrd", str(self.initrd)]
        return argv + list(self.extra)

    def __enter__(self) -> VM:
        require_tool(self.machine.qemu, "qemu-system-arm")
        log.debug("qemu: %s", " ".join(self.argv()))
        self._started = self.since if self.since is not None else time.monotonic()
        self._proc = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        threading.Thread(target=self._read_console, name="qemu-console", daemon=True).start()
        threading.Thread(target=self._watch_rss, name="qemu-rss", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()  # no-op after a clean power_off(); on an error or Ctrl-C: no waiting
        shutil.rmtree(self._control, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def lines(self, timeout: float) -> Iterator[ConsoleLine]:
        """Console lines as they come, until QEMU exits or `timeout` seconds pass in total."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                line = self._lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                if not self.running and self._lines.empty():
                    return
                continue
            if line is None:
                return
            yield line

    def _read_console(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        mode = "w" if self.since is None else "a"
        with open(
            self.console_log, mode, encoding="utf-8", errors="replace", opener=_private
        ) as out:
            for raw in self._proc.stdout:
                text = _ANSI.sub("", raw.decode("utf-8", errors="replace")).rstrip("\n")
                out.write(text + "\n")
                out.flush()
                self._lines.put(ConsoleLine(time.monotonic() - self._started, text))
        self._lines.put(None)

    def _watch_rss(self) -> None:
        status = Path(f"/proc/{self._proc.pid if self._proc else 0}/status")
        while self.running:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.5)

    def power_off(self, timeout: float = 90.0) -> bool:
        """Press the power button (QMP `system_powerdown`) and wait for the guest to shut down,
        so what it wrote reaches its disk; True when it did within `timeout` seconds."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return True
        if self.machine.board != "virt":
            log.info("a %s has no power button: QEMU is stopped instead", self.machine.board)
            return False
        try:
            self.qmp("system_powerdown")
            proc.wait(timeout=timeout)
            return True
        except BuildError as exc:
            log.debug("qmp system_powerdown failed: %s", exc)
        except subprocess.TimeoutExpired:
            log.warning("the guest did not power off within %.0f s; stopping QEMU", timeout)
        return False

    def stop(self, grace: float = 20.0) -> None:
        """Pull the plug: SIGTERM, which QEMU takes as QMP `quit` (the guest stops at once, its
        disk images closed cleanly), then SIGKILL if QEMU is not gone within `grace` seconds.

        Not QMP `quit` itself: a power cut must land at the console line that asked for it,
        and a `quit` that did not take (seen once in a CI run) left the guest running for the
        20 s grace, past the state the test meant to cut in."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            proc.send_signal(sig)
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def qmp(self, command: str, **arguments: object) -> object:
        """Run one QMP command (with `arguments`, e.g. set_link name=net0 up=False)."""
        from qemu.qmp.legacy import QEMUMonitorProtocol

        monitor = QEMUMonitorProtocol(str(self.qmp_socket))
        try:
            monitor.connect()
            return monitor.cmd(command, **arguments)
        except Exception as exc:  # the library raises its own error types
            raise BuildError(f"QMP {command}: {exc}") from None
        finally:
            # After `quit` QEMU closes the socket first: closing our end may then raise.
            with contextlib.suppress(Exception):
                monitor.close()


def require_qemu(arch: str, board: str = "virt") -> Machine:
    if arch not in MACHINES:
        raise UserError(f"no QEMU machine for architecture {arch!r} (arm64 or armhf)")
    machine = MACHINES[arch]
    if board != "virt":
        machine = BOARD_MACHINES[board]
        if machine.arch != arch:
            raise UserError(f"--machine {board} boots {machine.arch} images; this image is {arch}")
    require_tool(machine.qemu, "qemu-system-arm")
    if not os.access("/dev/null", os.W_OK):
        raise BuildError("/dev/null is not writable")
    return machine


def _private(path: str, flags: int) -> int:
    """Open the console log 0600 from its first byte: it is kept with the VM disk (--keep)."""
    return os.open(path, flags | os.O_NOFOLLOW, 0o600)
