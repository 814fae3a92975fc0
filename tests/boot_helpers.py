"""The QEMU boot tests' shared parts: the boot fleet, the cached bases, a personalized
device image built with the real CLI, one `pifleet boot-test` run of it, and the disk a guest
left, read with independent tools."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from builder.bases import debian as base
from builder.testserver.server import K3sTestServer
from tests.conftest import REPO, pifleet
from tests.image_read import partitions

STANDIN = REPO / "tests/fixtures/k3s-standin"
DEVICE = "edge-007"
BOOT_TIMEOUT = "900"
# The Debian suite each architecture's boot tests build their base from: a setting, not a probe
# of the mirror, so that a run is reproducible. The Debian mirror's trixie armhf index has not
# matched its Release file since 2026-11-21 (issue 17); bookworm's verifies. `make test` builds
# the bases these name (its ARMHF_SUITE is read from this line).
ARMHF_SUITE = "bookworm"
SUITES = {"arm64": "trixie", "armhf": ARMHF_SUITE}


def fleet_yaml(arch: str, base_image: Path, device: str = "") -> str:
    """The boot fleet; `device`: more YAML keys for DEVICE's entry (one `key: value` a line)."""
    more = "".join(f"\n    {line}" for line in device.splitlines())
    return f"""\
name: boot-fleet
arch: {arch}
base: {{path: {base_image}}}
k3s: {{binary: {STANDIN}, test_standin: true}}
cluster:
  server: https://k3s.example.internal:6443
  token_file: token
  node_labels: {{fleet: boot}}
users:
  - name: ops
    sudo: true
    ssh_authorized_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@laptop']
devices:
  - hostname: {DEVICE}
    labels: {{zone: lab}}{more}
output: {{dir: out, formats: [img], bmap: false}}
"""


def base_image(arch: str) -> Path:
    """The cached `pifleet base` for `arch` from its suite in SUITES (built when absent)."""
    return base.ensure_base(arch, SUITES[arch])


def device_image(
    workdir: Path, arch: str, extra: str = "", base_path: Path | None = None, device: str = ""
) -> tuple[Path, Path]:
    """Build the golden image with the real CLI and personalize DEVICE: (image, server state).

    From `base_path` (default: the cached cloud-init base of `arch`), with `device`'s keys in
    DEVICE's entry of the fleet file.

    The K3s test server's state (CA and token password) is made first so the
    token the image carries is one the server accepts.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    state = workdir / "vm" / "k3s-test-server"
    token = workdir / "token"
    token.write_text(K3sTestServer(state_dir=state).mint_token() + "\n")
    token.chmod(0o600)
    fleet = fleet_yaml(arch, base_path or base_image(arch), device)
    (workdir / "fleet.yaml").write_text(fleet + extra)
    built = pifleet("build", "fleet.yaml", cwd=workdir)
    assert built.returncode == 0, built.stderr
    image = workdir / f"{DEVICE}.img"
    made = pifleet(
        "personalize", "out/boot-fleet.img", "--config", "fleet.yaml", "--device", DEVICE,
        "-o", str(image), cwd=workdir,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return image, state


def guest_disk(overlay: Path, tmp: Path) -> tuple[Path, Path]:
    """The disk as the guest left it, read with independent tools: (whole disk, root partition).

    The overlay over the image is flattened to one raw file (qemu-img), the root
    partition cut out of it (dd) and checked: after the clean power-off the
    boot test does, e2fsck must find it clean with no journal to replay.
    """
    disk = tmp / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(overlay), str(disk)], check=True)
    start = partitions(disk)[1]["start"] * 512
    root = tmp / "root.ext4"
    subprocess.run(
        ["dd", f"if={disk}", f"of={root}", "bs=4M", "iflag=skip_bytes", f"skip={start}",
         "conv=sparse", "status=none"],
        check=True,
    )  # fmt: skip
    fsck = subprocess.run(["e2fsck", "-fn", str(root)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    return disk, root


@dataclass(frozen=True)
class BootTestRun:
    """One `pifleet boot-test --keep VM --junit FILE` of an image, as its tests read it."""

    image: Path
    state: Path  # the K3s test server's state
    vm: Path  # what --keep kept: disk.qcow2, console.log
    junit: Path
    proc: subprocess.CompletedProcess[str]
    before: str  # the image's sha256 before the boot
    cwd: Path


def image_sha256(image: Path) -> str:
    """The image file's sha256, to show a boot-test never writes the image it proves."""
    digest = hashlib.sha256()
    with open(image, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def run_boot_test(image: Path, state: Path, tmp_path: Path) -> BootTestRun:
    """`pifleet boot-test` through the real CLI, the VM kept beside the server's state."""
    before = image_sha256(image)
    vm = state.parent
    junit = tmp_path / "junit.xml"
    proc = pifleet(
        "boot-test", str(image), "--keep", str(vm), "--junit", str(junit),
        "--timeout", BOOT_TIMEOUT, cwd=tmp_path, timeout=1200,
    )  # fmt: skip
    return BootTestRun(image, state, vm, junit, proc, before, tmp_path)
