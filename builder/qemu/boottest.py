"""`pifleet boot-test IMAGE`: boot the exact image under QEMU and prove it joins.

The image is attached through a qcow2 overlay (never written). Its boot
partition, as the guest sees it, gets the test server's URL and a token; the
serial console is followed for milestones (kernel, systemd, cloud-init
finished, every first-boot agent state, joined) and the test server records
the registration. Exit 0 when the node joined within --timeout, 1 otherwise
with the last 50 console lines.

The boot itself is builder/qemu/power.py's (`prepare`, then `power_on` until the boot
passed); the console reading, builder/qemu/console.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from builder.detect.flavor import detect
from builder.disk.image import Image
from builder.qemu.console import BootResult, Milestone
from builder.qemu.power import Hooks, boot_kernel, power_on, prepare
from builder.qemu.vm import require_qemu
from builder.testserver.kubeadm import KubeadmTestServer
from builder.testserver.listening import Listening
from builder.testserver.server import K3sTestServer
from builder.util.errors import UserError
from builder.util.secret import Secret
from firstboot import joinconfig

log = logging.getLogger("pifleet.boot-test")

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class BootOptions:
    image: Path
    timeout: float = 900.0
    kernel: Path | None = None
    initrd: Path | None = None
    server: str | None = None  # a real server; None starts the K3s test server
    token: Secret | None = None  # with `server`, or to override the test server's token
    keep: Path | None = None  # keep the VM's disk and console log here
    server_state: Path | None = None  # the test server's CA and registry (default: fresh)
    machine: str = "virt"  # or a Raspberry Pi board: raspi3b (arm64), raspi2b (armhf)


def boot_test(
    opts: BootOptions, on_milestone: Milestone | None = None, hooks: Hooks | None = None
) -> BootResult:
    """Boot `opts.image` and follow it until the node joins, fails, or time runs out; `hooks`:
    what a boot test does to the boot besides (the CLI passes none)."""
    hooks = hooks or Hooks()
    image = Image.open(opts.image)
    flavor = detect(image)
    require_qemu(flavor.arch, opts.machine)
    if opts.server is not None and opts.token is None:
        raise UserError("--server needs --token-file (the token the image should join with)")
    with contextlib.ExitStack() as stack:
        work = _workdir(stack, opts.keep)
        kernel = boot_kernel(image, work, flavor.arch, opts.kernel, opts.initrd, opts.machine)
        server, token = _server(stack, opts, hooks, work, _kind(image))
        guest = prepare(
            image, server, token, work, flavor=flavor, kernel=kernel, board=opts.machine
        )
        if isinstance(server, K3sTestServer) and hooks.server_down_for > 0:
            on_milestone = _outage(stack, server, hooks.server_down_for, on_milestone)
        result = power_on(guest, timeout=opts.timeout, on_milestone=on_milestone, hooks=hooks)
        if isinstance(server, KubeadmTestServer):
            result.registered = server.nodes()
        if isinstance(server, K3sTestServer):
            result.registered = server.registered_nodes()
        unknown = isinstance(server, Listening) and result.node not in result.registered
        if result.joined and unknown:
            result.joined = False
            result.failure = (
                f"the agent reported joined as {result.node} but the server has no such node"
            )
        return result
    raise AssertionError("unreachable")


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


def _server(
    stack: contextlib.ExitStack,
    opts: BootOptions,
    hooks: Hooks,
    work: Path,
    kind: str = "k3s",
) -> tuple[Listening | str, Secret]:
    if opts.server is not None:
        assert opts.token is not None
        return opts.server, opts.token
    if hooks.test_server is not None:
        return hooks.test_server, opts.token or Secret(hooks.test_server.mint_token())
    if kind == "kubeadm":
        kubeadm = stack.enter_context(KubeadmTestServer(state_dir=work / "kubeadm-test-server"))
        log.info("kubeadm test server on %s (the guest sees %s)", kubeadm.url, kubeadm.guest_url)
        return kubeadm, opts.token or Secret(kubeadm.mint_token())
    state = opts.server_state or work / "k3s-test-server"
    server = stack.enter_context(K3sTestServer(state_dir=state))
    log.info("K3s test server on %s (the guest sees %s)", server.url, server.guest_url)
    return server, opts.token or Secret(server.mint_token())


def _kind(image: Image) -> str:
    """What the image joins (its join.json's kind): k3s or kubeadm."""
    raw = image.root.read(joinconfig.JOIN_CONFIG_PATH)
    if raw is None:
        return "k3s"
    try:
        return joinconfig.load_join_config(raw).kind
    except joinconfig.JoinConfigError as exc:
        raise UserError(f"{image.path}: {exc}") from None


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
        machine=args.machine,
    )
    board = "" if args.machine == "virt" else f" -M {args.machine}"
    print(f"booting {image} under QEMU{board} (timeout {args.timeout:.0f} s)", flush=True)
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
