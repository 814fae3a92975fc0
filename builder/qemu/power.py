"""Powering an image on under QEMU until a chosen stage: the one way pifleet boots an image.

`prepare` attaches the image through a qcow2 overlay (the image is never written) whose boot
partition points the agent at a server with a token, keeping the device's identity.
`power_on` boots that disk and follows its serial console until a `Stage` (the boot passed,
the node joined, the agent entered a state...), then powers the guest off cleanly so what it
wrote is on its disk. A guest reboot (firstrun.sh's `systemd.run_success_action=reboot`) ends
QEMU (-no-reboot); the next power-on reads cmdline.txt again from the guest's boot partition,
as a Raspberry Pi's firmware does at every power-on.

`pifleet boot-test` powers on until the boot passed. The boot tests power the same disk on
again and again, until the stage they act at, with what they do to a boot in a `Hooks`
value (a power cut, a clock, a callback per console line) that the CLI never builds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from builder.detect.flavor import Flavor, detect
from builder.disk.image import Image
from builder.qemu import overlay
from builder.qemu.board import BOARD_CHANGES, board_boot, sd_card_size
from builder.qemu.console import BootResult, Milestone, Stage, follow, verdict
from builder.qemu.pikernel import pi_kernel_name, root_kernel
from builder.qemu.vm import VM, Machine, emulation_change, kernel_command_line, require_qemu
from builder.testserver.kubeadm import KubeadmTestServer
from builder.testserver.listening import Listening
from builder.testserver.server import K3sTestServer
from builder.util.secret import Secret
from firstboot import joinconfig

log = logging.getLogger("pifleet.boot")

MAX_BOOTS = 4  # Pi OS Bookworm's firstboot (init=), firstrun.sh, the one that joins, a spare


@dataclass(frozen=True)
class Hooks:
    """What a boot test does to a boot that `pifleet boot-test` never does."""

    test_server: K3sTestServer | None = None  # a running test server in a chosen mode
    server_down_for: float = 0.0  # test server unreachable until this long after the agent's verify
    tolerate_failures: bool = False  # an agent verdict is recorded; follow on until `until`
    tolerate_cloud_init: bool = False  # a failed cloud-init stage too (after a power cut)
    qemu_args: tuple[str, ...] = ()  # more QEMU arguments, e.g. ("-rtc", "base=1970-01-01")
    during: Callable[[VM, BootResult, str], None] | None = None  # after each console line
    cut_power: bool = False  # at `until`, pull the plug (QMP quit) instead of a clean power-off


@dataclass(frozen=True)
class Guest:
    """An image ready to power on: its overlay `disk`, the kernel to boot, its machine."""

    image: Path
    machine: Machine
    disk: Path  # the qcow2 overlay, in `work`
    kernel: Path
    initrd: Path | None
    cloud_init: bool  # False for an image without cloud-init (systemd format)
    work: Path
    modules: Path | None = None  # the supplied kernel's modules disk (read-only), if any
    dtb: Path | None = None  # a board's device tree


@dataclass(frozen=True)
class BootKernel:
    """What QEMU boots: a kernel, its initrd, for the kernel pifleet supplies its modules, and
    for a board the device tree."""

    kernel: Path
    initrd: Path | None
    modules: Path | None = None
    dtb: Path | None = None


def prepare(
    image: Image,
    server: Listening | str,
    token: Secret,
    work: Path,
    *,
    flavor: Flavor | None = None,
    kernel: BootKernel | None = None,
    board: str = "virt",
) -> Guest:
    """The overlay over `image` in `work`, its boot partition pointing the agent at `server`
    with `token`; `kernel`: what to boot, default `boot_kernel`'s choice (for a `board`, the
    image's own kernel as the firmware picks it: builder/qemu/board.py)."""
    flavor = flavor or detect(image)
    machine = require_qemu(flavor.arch, board)
    boot = kernel or boot_kernel(image, work, flavor.arch, board=board)
    disk = work / "disk.qcow2"
    card = None if board == "virt" else sd_card_size(image.path.stat().st_size)
    overlay.create(image.path, disk, card)
    overlay.write_boot_files(
        image.path, disk, redirect(image, server, token), image.epoch or int(time.time())
    )
    return Guest(image.path, machine, disk, boot.kernel, boot.initrd, flavor.cloud_init, work,
                 boot.modules, boot.dtb)  # fmt: skip


def power_on(
    guest: Guest,
    until: Stage = Stage.PASSED,
    *,
    timeout: float,
    on_milestone: Milestone | None = None,
    hooks: Hooks | None = None,
    console_log: Path | None = None,
) -> BootResult:
    """Power `guest` on and follow its console until `until`, a failure, or `timeout` seconds;
    then power it off (at most MAX_BOOTS power-ons, one after each guest reboot, each with
    the cmdline.txt the guest left). `result.failure` says why `until` was not reached."""
    hooks = hooks or Hooks()
    log = console_log or guest.work / "console.log"
    result = BootResult(overlay=guest.disk, cloud_init_expected=guest.cloud_init)
    started = time.monotonic()
    deadline = started + timeout
    for count in range(MAX_BOOTS):
        cmdline = overlay.read_boot_file(guest.image, guest.disk, "/cmdline.txt") or b""
        append = kernel_command_line(cmdline.decode(errors="replace"), guest.machine)
        since = started if count else None
        vm = VM(guest.machine, guest.disk, guest.kernel, guest.initrd, append, log,
                extra=hooks.qemu_args, since=since, modules=guest.modules,
                dtb=guest.dtb)  # fmt: skip
        with vm:
            reboots = result.reboots
            on_line = _on_line(vm, result, hooks)
            follow(vm.lines(deadline - time.monotonic()), result, on_milestone,
                   hooks.tolerate_failures, until, on_line, hooks.tolerate_cloud_init)  # fmt: skip
            if result.failure is None and not until.reached(result):
                if result.reboots > reboots and _exited(vm):
                    result.peak_rss_kib = max(result.peak_rss_kib, vm.peak_rss_kib)
                    continue  # the guest restarted itself: the next power-on
                result.failure = _missed(result, until, timeout, vm.running)
            if not hooks.cut_power:
                vm.power_off()  # so what the guest wrote is on its disk; warns if it won't
            result.peak_rss_kib = max(result.peak_rss_kib, vm.peak_rss_kib)
            vm.stop()
            break
    else:
        result.failure = f"the guest rebooted {result.reboots} times without joining"
    result.seconds = time.monotonic() - started
    return result


def _missed(result: BootResult, until: Stage, timeout: float, running: bool) -> str | None:
    """Why `until` was not reached: boot-test's verdict when it waits for the boot to pass."""
    if until is Stage.PASSED:
        return verdict(result, timeout, running)
    waited = f"timed out after {timeout:.0f} s" if running else "QEMU exited"
    return f"{waited} waiting for {until.name}"


def _on_line(vm: VM, result: BootResult, hooks: Hooks) -> Callable[[str], None] | None:
    during = hooks.during
    if during is None:
        return None
    return lambda text: during(vm, result, text)


def _exited(vm: VM, grace: float = 30.0) -> bool:
    """After the guest said it restarts: QEMU (-no-reboot) ends within `grace` seconds."""
    end = time.monotonic() + grace
    while vm.running and time.monotonic() < end:
        time.sleep(0.2)
    return not vm.running


def boot_kernel(
    image: Image,
    work: Path,
    arch: str,
    kernel: Path | None = None,
    initrd: Path | None = None,
    board: str = "virt",
) -> BootKernel:
    """What to boot: on a `board`, the image's own kernel, initramfs and device tree; else
    `kernel` and `initrd` when given; else the image's generic kernel (/boot/vmlinuz,
    /boot/initrd.img, copied into `work`); else, for an image whose kernel only a Raspberry
    Pi boots, the generic kernel pifleet supplies (builder/qemu/supplied.py)."""
    if (change := emulation_change(arch)) is not None:
        log.info("on the QEMU command line only: %s", change)
    if board != "virt":
        picked = board_boot(image, work, board)
        log.info("%s: booting the image's %s", board, picked.chosen)
        for change in BOARD_CHANGES:
            log.info("%s: on the QEMU command line only: %s", board, change)
        return BootKernel(picked.kernel, picked.initrd, None, picked.dtb)
    if kernel is not None:
        return BootKernel(kernel, initrd)
    generic = root_kernel(image)
    if generic is not None:
        kernel_file, initrd_file = work / "vmlinuz", work / "initrd.img"
        kernel_file.write_bytes(image.root.read(generic) or b"")
        initrd_data = image.root.read("/boot/initrd.img")
        if initrd_data is not None:
            initrd_file.write_bytes(initrd_data)
        return BootKernel(kernel_file, initrd_file if initrd_data is not None else None)
    from builder.qemu.supplied import supplied_kernel

    supplied = supplied_kernel(arch)
    log.info(
        "%s is a Raspberry Pi kernel: booting under -M virt with Debian's %s %s kernel and its "
        "modules, supplied by pifleet", pi_kernel_name(image), supplied.version, arch,
    )  # fmt: skip
    return BootKernel(supplied.vmlinuz, supplied.initrd, supplied.modules)


def redirect(image: Image, server: Listening | str, token: Secret) -> dict[str, bytes | None]:
    """Boot-partition files that point the agent at this boot's server, keeping the device's identity."""
    device_path = f"/{joinconfig.BOOT_SUBDIR}/{joinconfig.DEVICE_FILE}"
    raw = image.boot.read(device_path)
    device = joinconfig.load_device_config(raw, device_path) if raw else joinconfig.DeviceConfig()
    url = server.guest_url if isinstance(server, Listening) else server
    updated = replace(device, server=url)  # keeps the role and a server's cluster settings
    if isinstance(server, KubeadmTestServer):  # a kubeadm image pins its own cluster's CA
        updated = replace(updated, ca_cert_hashes=[server.ca_hash])
    return {
        device_path: joinconfig.dump_device_config(updated),
        f"/{joinconfig.BOOT_SUBDIR}/{joinconfig.BOOT_TOKEN_FILE}": (token.reveal() + "\n").encode(),
    }
