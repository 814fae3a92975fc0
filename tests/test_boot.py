"""QEMU boot tests: an image built by `pifleet build` boots, runs cloud-init and joins.

The base comes from `pifleet base` (cached by its inputs; built when absent),
the image from the real CLI with the K3s test stand-in as its K3s binary, and
the boot from `pifleet boot-test` against the K3s test server. Every claim is
checked twice where it can be: on the guest's serial console and in what the
guest left on its disk (the qcow2 overlay, flattened and read with debugfs and
mtools) or in the test server's own records.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import pytest

from builder.disk.image import Image
from builder.testserver.server import K3sTestServer
from firstboot.state import ORDER
from tests import static_address
from tests.boot_helpers import (
    ARMHF_SUITE,
    DEVICE,
    BootTestRun,
    base_image,
    device_image,
    guest_disk,
    image_sha256,
    run_boot_test,
)
from tests.conftest import pifleet
from tests.image_read import ext4_read, fat_names
from tests.pi_layout import pi_kernel_only

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def armhf_base() -> Path:
    """The armhf base, built (or taken from the cache) once per session for every armhf test."""
    return base_image("armhf")


@pytest.fixture(scope="session")
def armhf_device(armhf_base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """With a static address (cloud-init renders network-config's to systemd-networkd) and a
    unit that prints eth0's addresses: the cloud-init path's proof, at no extra boot. Laid out
    as Raspberry Pi OS armhf ships it (a Pi kernel only, kernel7l.img): boot-test supplies
    Debian's armmp-lpae kernel."""
    workdir = tmp_path_factory.mktemp("armhf")
    pi_os = pi_kernel_only(armhf_base, workdir / "raspios-armhf.img", "armhf")
    image, state = device_image(
        workdir, "armhf", base_path=pi_os, device=static_address.DEVICE_KEYS
    )
    static_address.add_show_unit(image, workdir)
    return image, state


def token_of(state: Path) -> str:
    return K3sTestServer(state_dir=state).mint_token()


def assert_joined_on_disk(overlay: Path, tmp: Path, node: str) -> None:
    """What the guest wrote: cloud-init's result, the hostname, the agent's final state,
    and no token left in the boot partition."""
    disk, root = guest_disk(overlay, tmp)
    result = json.loads(ext4_read(root, "/var/lib/cloud/data/result.json"))
    assert result["v1"]["errors"] == [], f"cloud-init reported errors: {result}"
    assert result["v1"]["datasource"].startswith("DataSourceNoCloud"), (
        f"cloud-init's datasource is not NoCloud: {result}"
    )
    # The seed's network-config was read (not cloud-init's fallback, which also does DHCP).
    assert b"Applying network configuration from ds " in ext4_read(
        root, "/var/log/cloud-init.log"
    ), "cloud-init did not apply the seed's network-config"
    hostname = ext4_read(root, "/etc/hostname").decode().strip()
    assert hostname == node, f"the guest's hostname is {hostname}, not {node}"
    state = json.loads(ext4_read(root, "/var/lib/pifleet/state.json"))
    assert state["state"] == "done", f"the agent's state is {state['state']}, not done"
    assert state["node_name"] == node, f"the agent's node is {state['node_name']}, not {node}"
    assert state["history"][-1]["state"] == "done", f"the agent's history: {state['history']}"
    listing = subprocess.run(
        ["debugfs", "-R", "ls /var/lib/pifleet", str(root)], capture_output=True, text=True
    ).stdout
    assert "joined" in listing, f"no joined marker in /var/lib/pifleet: {listing}"
    seed_dir = fat_names(disk, "/pifleet")
    assert "device.json" in seed_dir, f"device.json left the boot partition: {seed_dir}"
    assert "/token" not in seed_dir, f"the token is still on the boot partition: {seed_dir}"
    assert "node-password" not in seed_dir, f"the node password is still there: {seed_dir}"
    # The card tells its story to anyone who reads it (issue 16): pifleet diagnose, rootless.
    story = pifleet("diagnose", str(disk), cwd=tmp)
    assert story.returncode == 0, f"pifleet diagnose failed: {story.stdout}{story.stderr}"
    assert story.stdout.startswith(f"{node}: joined as {node} at "), (
        f"the card does not say {node} joined: {story.stdout}"
    )


def test_arm64_image_boots_runs_cloud_init_and_joins(
    arm64_boot_test: BootTestRun, tmp_path: Path
) -> None:
    """The shared arm64 device has a Raspberry Pi kernel only (tests/pi_layout.py), as Pi OS:
    boot-test boots Debian's generic kernel (builder/qemu/supplied.py), and the modules the
    device needs load from the supplied read-only disk, none from the image."""
    check_boot_test(arm64_boot_test, tmp_path)
    run = arm64_boot_test
    assert re.search(
        r"kernel8\.img is a Raspberry Pi kernel: booting under -M virt with Debian's "
        r"\d+\.\d+\.\d+\S* arm64 kernel and its modules, supplied by pifleet",
        run.proc.stderr,
    ), run.proc.stderr
    # KASLR (so KPTI) and the mitigations are off on QEMU's -append only, and it is said.
    assert "on the QEMU command line only: kernel hardening off" in run.proc.stderr
    console = (run.vm / "console.log").read_text()
    assert "Kernel page table isolation" not in console and "KASLR enabled" not in console
    cmdline = Image.open(run.image).boot.read("/cmdline.txt") or b""
    assert b"nokaslr" not in cmdline and b"mitigations" not in cmdline, cmdline
    changed = [
        ln for ln in run.proc.stdout.splitlines() if "under QEMU: /lib/modules is kernel" in ln
    ]
    assert changed, f"boot-test did not report the supplied modules: {run.proc.stdout}"
    (tmp_path / "again").mkdir()
    disk, _root = guest_disk(run.vm / "disk.qcow2", tmp_path / "again")
    raw = Image.open(disk).boot.read("/pifleet/report.json")
    assert raw is not None, "the card has no report"
    journal = json.loads(raw)["journal"]
    # The K3s stand-in loads modules and sets sysctls as K3s does (pkg/agent/syssetup/setup.go).
    # Debian's 6.12 has nft-expr-counter built into nf_tables, so K3s warns about it there too.
    assert any("Set sysctl 'net/ipv4/conf/all/forwarding' to 1" in ln for ln in journal), (
        f"the K3s stand-in's system set-up did not run: {journal[-30:]}"
    )
    needed = ("overlay", "nf_conntrack", "br_netfilter", "iptable_nat", "iptable_filter")
    failed = [
        ln
        for ln in journal
        if any(f"Failed to load kernel module {m} " in ln for m in needed)
        or "Failed to set sysctl" in ln
    ]
    assert failed == [], f"modules missing under the supplied kernel: {failed}"


@pytest.mark.armhf_boot
def test_armhf_base_is_the_configured_suite_laid_out_like_pi_os(armhf_base: Path) -> None:
    """What `pifleet inspect` says of the armhf base: its suite, Pi OS's boot mount and seed."""
    shown = pifleet("inspect", "--json", str(armhf_base), cwd=armhf_base.parent)
    assert shown.returncode == 0, shown.stderr
    facts = json.loads(shown.stdout)
    assert (facts["os"]["suite"], facts["os"]["codename"]) == (ARMHF_SUITE, ARMHF_SUITE)
    assert (facts["os"]["arch"], facts["os"]["boot_mount"]) == ("armhf", "/boot/firmware")
    assert facts["os"]["cloud_init"] and facts["os"]["generic_kernel"]
    assert facts["image"]["boot_label"] == "bootfs"
    assert facts["seed"]["files"] == ["user-data", "meta-data", "network-config"]
    text = pifleet("inspect", str(armhf_base), cwd=armhf_base.parent).stdout
    assert f"apt suite {ARMHF_SUITE}" in text


@pytest.mark.armhf_boot
def test_armhf_image_boots_runs_cloud_init_and_joins(
    armhf_device: tuple[Path, Path], tmp_path: Path
) -> None:
    """ARMv7 under qemu-system-arm (cortex-a15), from the ARMHF_SUITE base; eth0 has the
    device's static address from cloud-init's network-config."""
    boots_and_joins(*armhf_device, tmp_path)
    static_address.assert_static_on_eth0((armhf_device[1].parent / "console.log").read_text())


def boots_and_joins(image: Path, state: Path, tmp_path: Path) -> None:
    """`pifleet boot-test` through the real CLI, then every claim checked independently."""
    check_boot_test(run_boot_test(image, state, tmp_path), tmp_path)


def check_boot_test(run: BootTestRun, tmp_path: Path) -> None:
    """Every claim of a boot-test run, checked independently."""
    image, state, vm, junit, proc, before = (
        run.image, run.state, run.vm, run.junit, run.proc, run.before
    )  # fmt: skip
    console = (vm / "console.log").read_text()
    assert proc.returncode == 0, f"boot-test failed: {proc.stdout[-4000:]}"
    assert f"joined: node {DEVICE}" in proc.stdout, f"boot-test did not report {DEVICE} joined"
    for milestone in ("kernel started", "cloud-init finished", "agent: verify", "joined"):
        assert milestone in proc.stdout, f"boot-test did not report {milestone}: {proc.stdout}"
    # The serial console: cloud-init finished, every agent state in order, no traceback.
    assert "Cloud-init v. " in console, "cloud-init never ran on the console"
    assert " finished at " in console, "cloud-init never finished on the console"
    states = [
        ln.split("state=")[1].split()[0] for ln in console.splitlines() if "firstboot: state=" in ln
    ]
    assert states == list(ORDER), f"the agent's states, not every one in order: {states}"
    assert f"pifleet-firstboot: joined node={DEVICE}" in console, "the agent never said joined"
    assert "Traceback" not in console, "a traceback on the console"
    # The test server's own records: exactly one node, under the expected name.
    nodes = K3sTestServer(state_dir=state).registered_nodes()
    assert nodes == [DEVICE], f"the test server has nodes {nodes}, not exactly {DEVICE}"
    # The guest's disk, read back after the VM stopped; the image itself untouched.
    assert "the guest did not power off" not in proc.stderr, "the guest did not power off"
    assert_joined_on_disk(vm / "disk.qcow2", tmp_path, DEVICE)
    assert image_sha256(image) == before, "the boot changed the image itself"
    report = ElementTree.parse(junit).getroot()
    assert report.get("failures") == "0", "the JUnit report records a failure"
    properties = {p.get("name") for p in report.iter("property")}
    assert properties >= {"kernel started", "joined"}, f"the JUnit milestones: {properties}"
    token = token_of(state)
    for name, text in (("stdout", proc.stdout), ("stderr", proc.stderr), ("console", console),
                       ("JUnit report", junit.read_text())):  # fmt: skip
        assert token not in text, f"the token is in the {name}"
        assert token.split(":")[-1] not in text, f"the token's password is in the {name}"
