"""`pifleet boot-test IMAGE`: boot the exact image under QEMU and prove it joins.

The image is attached through a qcow2 overlay (never written). Its boot
partition, as the guest sees it, gets the test server's URL and a token; the
serial console is followed for milestones (kernel, systemd, cloud-init
finished, every first-boot agent state, joined) and the test server records
the registration. Exit 0 when the node joined within --timeout, 1 otherwise
with the last 50 console lines.

A guest reboot (firstrun.sh's `systemd.run_success_action=reboot`) ends QEMU
(-no-reboot); the next power-on reads cmdline.txt again from the guest's boot
partition, as a Raspberry Pi's firmware does at every power-on.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from builder.disk.flavor import detect
from builder.disk.image import Image
from builder.qemu import overlay
from builder.qemu.vm import VM, ConsoleLine, Machine, kernel_command_line, require_qemu
from builder.testserver.server import K3sTestServer
from builder.util.errors import UserError
from builder.util.secret import Secret
from firstboot import joinconfig

log = logging.getLogger("pifleet.boot-test")

MILESTONES = (
    ("kernel started", re.compile(r"Booting Linux on|Linux version \d")),
    ("root filesystem found", re.compile(r"pifleet initramfs: root is")),
    ("systemd started", re.compile(r"systemd\[1\]: |Welcome to ")),
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
MAX_BOOTS = 3  # a first boot that runs firstrun.sh, the one that joins, and one to spare
Milestone = Callable[[str, float], None]  # (name, seconds since QEMU started)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
LOGIN = re.compile(r"^(\S+) login:")


@dataclass(frozen=True)
class BootOptions:
    image: Path
    timeout: float = 900.0
    kernel: Path | None = None
    initrd: Path | None = None
    server: str | None = None  # a real server; None starts the K3s test server
    token: Secret | None = None  # with `server`, or to override the test server's token
    keep: Path | None = None  # keep the VM's disk and console log here
    server_down_for: float = 0.0  # test server unreachable until this long after the agent's verify
    server_state: Path | None = None  # the test server's CA and registry (default: fresh)
    test_server: K3sTestServer | None = None  # a running test server in a chosen mode
    tolerate_failures: bool = False  # an agent verdict is recorded; follow on until it joins


@dataclass
class BootResult:
    joined: bool = False
    node: str | None = None
    failure: str | None = None
    milestones: list[tuple[str, float]] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)  # `failed` lines, with tolerate_failures
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


def boot_test(opts: BootOptions, on_milestone: Milestone | None = None) -> BootResult:
    """Boot `opts.image` and follow it until the node joins, fails, or time runs out."""
    image = Image.open(opts.image)
    flavor = detect(image)
    machine = require_qemu(flavor.arch)
    if opts.server is not None and opts.token is None:
        raise UserError("--server needs --token-file (the token the image should join with)")
    with contextlib.ExitStack() as stack:
        work = _workdir(stack, opts.keep)
        kernel, initrd = _kernel_and_initrd(image, opts, work)
        server, token = _server(stack, opts, work)
        disk = work / "disk.qcow2"
        overlay.create(opts.image, disk)
        overlay.write_boot_files(
            opts.image, disk, _redirect(image, server, token), image.epoch or int(time.time())
        )
        result = BootResult(overlay=disk, cloud_init_expected=flavor.cloud_init)
        if isinstance(server, K3sTestServer) and opts.server_down_for > 0:
            on_milestone = _outage(stack, server, opts.server_down_for, on_milestone)
        boot = Boot(machine, disk, kernel, initrd, work / "console.log")
        _run(boot, opts, result, on_milestone)
        if isinstance(server, K3sTestServer):
            result.registered = server.registered_nodes()
            if result.joined and result.node not in result.registered:
                result.joined = False
                result.failure = (
                    f"the agent reported joined as {result.node} but the server has no such node"
                )
        return result
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Boot:
    machine: Machine
    disk: Path  # the qcow2 overlay
    kernel: Path
    initrd: Path | None
    console_log: Path


def _run(boot: Boot, opts: BootOptions, result: BootResult, on_milestone: Milestone | None) -> None:
    """Power on, follow the console, and power on again after each guest reboot (at most
    MAX_BOOTS boots in `opts.timeout` seconds), each time with the cmdline.txt the guest left."""
    started = time.monotonic()
    deadline = started + opts.timeout
    for count in range(MAX_BOOTS):
        cmdline = overlay.read_boot_file(opts.image, boot.disk, "/cmdline.txt") or b""
        append = kernel_command_line(cmdline.decode(errors="replace"), boot.machine)
        since = started if count else None
        vm = VM(boot.machine, boot.disk, boot.kernel, boot.initrd, append, boot.console_log,
                since=since)  # fmt: skip
        with vm:
            reboots = result.reboots
            follow(vm.lines(deadline - time.monotonic()), result, on_milestone,
                   opts.tolerate_failures)  # fmt: skip
            if result.failure is None and not done(result):
                if result.reboots > reboots and _exited(vm):
                    result.peak_rss_kib = max(result.peak_rss_kib, vm.peak_rss_kib)
                    continue  # the guest restarted itself: the next power-on
                result.failure = verdict(result, opts.timeout, vm.running)
            vm.power_off()  # so what the guest wrote is on its disk (--keep); warns if it won't
            result.peak_rss_kib = max(result.peak_rss_kib, vm.peak_rss_kib)
            vm.stop()
            break
    else:
        result.failure = f"the guest rebooted {result.reboots} times without joining"
    result.seconds = time.monotonic() - started


def _exited(vm: VM, grace: float = 30.0) -> bool:
    """After the guest said it restarts: QEMU (-no-reboot) ends within `grace` seconds."""
    end = time.monotonic() + grace
    while vm.running and time.monotonic() < end:
        time.sleep(0.2)
    return not vm.running


def done(result: BootResult) -> bool:
    """The node joined, and cloud-init (where the image has it) finished."""
    return result.joined and (result.cloud_init is not None or not result.cloud_init_expected)


def _outage(
    stack: contextlib.ExitStack,
    server: K3sTestServer,
    seconds: float,
    on_milestone: Milestone | None,
) -> Milestone:
    """Take the server down now and bring it back `seconds` after the agent first needs it
    (its verify state), so the agent really meets an unreachable server and must retry."""
    server.set_down(True)
    timer = threading.Timer(seconds, server.set_down, args=(False,))
    stack.callback(timer.cancel)

    def milestone(name: str, at: float) -> None:
        if name == "agent: verify":
            log.info("the test server stays unreachable for %.0f s more", seconds)
            timer.start()
        if on_milestone is not None:
            on_milestone(name, at)

    return milestone


def _workdir(stack: contextlib.ExitStack, keep: Path | None) -> Path:
    if keep is not None:
        # A new folder is private; in any folder the VM disk and console log are 0600.
        keep.mkdir(mode=0o700, parents=True, exist_ok=True)
        return keep
    tmp = Path(tempfile.mkdtemp(prefix="pifleet-boot-"))
    stack.callback(shutil.rmtree, tmp, ignore_errors=True)
    return tmp


def _kernel_and_initrd(image: Image, opts: BootOptions, work: Path) -> tuple[Path, Path | None]:
    if opts.kernel is not None:
        return opts.kernel, opts.initrd
    found = {}
    for name in ("/boot/vmlinuz", "/boot/initrd.img"):
        data = image.root.read(name)
        if data is not None:
            found[name] = work / Path(name).name
            found[name].write_bytes(data)
    if "/boot/vmlinuz" not in found:
        raise UserError(
            f"{image.path}: no generic kernel (/boot/vmlinuz) in the image; a Raspberry Pi kernel does "
            "not boot under QEMU -M virt: give --kernel and --initrd"
        )
    return found["/boot/vmlinuz"], found.get("/boot/initrd.img")


def _server(
    stack: contextlib.ExitStack, opts: BootOptions, work: Path
) -> tuple[K3sTestServer | str, Secret]:
    if opts.server is not None:
        assert opts.token is not None
        return opts.server, opts.token
    if opts.test_server is not None:
        return opts.test_server, opts.token or Secret(opts.test_server.mint_token())
    state = opts.server_state or work / "k3s-test-server"
    server = stack.enter_context(K3sTestServer(state_dir=state))
    log.info("K3s test server on %s (the guest sees %s)", server.url, server.guest_url)
    return server, opts.token or Secret(server.mint_token())


def _redirect(image: Image, server: K3sTestServer | str, token: Secret) -> dict[str, bytes | None]:
    """Boot-partition files that point the agent at this boot's server, keeping the device's identity."""
    device_path = f"/{joinconfig.BOOT_SUBDIR}/{joinconfig.DEVICE_FILE}"
    raw = image.boot.read(device_path)
    device = joinconfig.load_device_config(raw, device_path) if raw else joinconfig.DeviceConfig()
    url = server.guest_url if isinstance(server, K3sTestServer) else server
    updated = replace(device, server=url)  # keeps the role and a server's cluster settings
    return {
        device_path: joinconfig.dump_device_config(updated),
        f"/{joinconfig.BOOT_SUBDIR}/{joinconfig.BOOT_TOKEN_FILE}": (token.reveal() + "\n").encode(),
    }


def follow(
    lines: Iterable[ConsoleLine],
    result: BootResult,
    on_milestone: Milestone | None = None,
    tolerate_failures: bool = False,
) -> None:
    """Read the console into `result` until the boot passed, the agent failed or a cloud-init
    stage failed (a failed stage fails the boot whatever follows, so waiting on is useless)."""
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
            if pattern.search(line.text):
                mark(name, line.seconds)
        if CLOUD_INIT_DONE.search(line.text):
            result.cloud_init = line.text.strip()
        if CLOUD_INIT_FAILED.search(line.text):
            result.cloud_init_errors.append(line.text.strip())
            result.failure = verdict(result, 0.0, running=True)  # decided: stop waiting now
            break
        if (state := AGENT_STATE.search(line.text)) is not None:
            mark(f"agent: {state.group(1)}", line.seconds)
        if REBOOTING.search(line.text):
            result.reboots += 1
            mark(f"reboot {result.reboots}", line.seconds)
            break
        if (login := LOGIN.search(line.text)) is not None:
            result.login_hostname = login.group(1)
        if (failed := AGENT_FAILED.search(line.text)) is not None:
            if tolerate_failures:
                result.verdicts.append(line.text.strip())
                mark(f"agent failed: {failed.group(1)}", line.seconds)
                continue
            result.failure = f"agent failed in {failed.group(1)}: {failed.group(2)}"
            break
        if (joined := AGENT_JOINED.search(line.text)) is not None:
            result.joined, result.node = True, joined.group(1)
            mark("joined", line.seconds)
        if done(result):
            break


def verdict(result: BootResult, timeout: float, running: bool) -> str | None:
    """Why the boot does not count as a pass, or None when it does."""
    if result.cloud_init_errors:
        return f"cloud-init failed: {result.cloud_init_errors[0]}"
    if done(result):
        return None
    waiting = "cloud-init to finish" if result.joined else "the node to join"
    return (
        f"timed out after {timeout:.0f} s waiting for {waiting}"
        if running
        else (f"QEMU exited while waiting for {waiting}")
    )


def write_junit(path: Path, image: Path, result: BootResult) -> None:
    """A JUnit XML report CI systems understand: one test case, milestones as properties."""
    from xml.etree import ElementTree as ET

    suite = ET.Element(
        "testsuite", name="pifleet boot-test", tests="1", failures="0" if result.passed else "1"
    )
    case = ET.SubElement(suite, "testcase", classname="pifleet.boot-test", name=f"boot {image.name}",
                         time=f"{result.seconds:.1f}")  # fmt: skip
    props = ET.SubElement(case, "properties")
    for name, seconds in result.milestones:
        ET.SubElement(props, "property", name=name, value=f"{seconds:.1f}")
    if not result.passed:
        failure = ET.SubElement(case, "failure", message=result.failure or "did not join")
        failure.text = _xml_text("\n".join(result.tail()))
    ET.SubElement(case, "system-out").text = _xml_text("\n".join(result.console))
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def _xml_text(text: str) -> str:
    """Console text as XML 1.0 allows it: a serial console carries control characters."""
    return _NOT_XML.sub("\ufffd", text)


def command(args: argparse.Namespace) -> int:
    from builder.config.token import read_token_file
    from builder.qemu.bootargs import check_options

    check_options(args)
    image = Path(args.image)
    token = read_token_file(Path(args.token_file)) if args.token_file else None
    opts = BootOptions(
        image=image,
        timeout=args.timeout,
        kernel=Path(args.kernel) if args.kernel else None,
        initrd=Path(args.initrd) if args.initrd else None,
        server=args.server,
        token=token,
        keep=Path(args.keep) if args.keep else None,
    )
    print(f"booting {image} under QEMU (timeout {args.timeout:.0f} s)", flush=True)
    result = boot_test(opts, on_milestone=lambda name, s: print(f"{s:8.1f} s  {name}", flush=True))
    if args.junit:
        write_junit(Path(args.junit), image, result)
    if result.passed:
        registered = (
            f"; the server registered {', '.join(result.registered)}" if result.registered else ""
        )
        how = ", cloud-init finished" if result.cloud_init is not None else ""
        if result.reboots:
            how += f", after {result.reboots} reboot{'s' if result.reboots > 1 else ''}"
        print(f"joined: node {result.node} in {result.seconds:.0f} s{how}{registered}")
        print(f"peak QEMU RSS {result.peak_rss_kib / 1024:.0f} MiB")
        return 0
    print(f"FAILED: {result.failure}")
    print("last console lines:")
    for line in result.tail():
        print(f"  | {line}")
    if opts.keep:
        print(f"VM disk and console log kept in {opts.keep}")
    return 1
