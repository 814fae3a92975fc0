"""A kubeadm worker image boots under QEMU and joins (issue 26): `pifleet build` of a
`cluster.kind: kubeadm` fleet (containerd and runc from Debian, the kubelet's unit, swap off),
`personalize`, then `boot-test`, which for a kubeadm image starts the kubeadm test server
(builder/testserver/kubeadm.py) and points the card at it with its CA pin. In the guest the
agent runs kubeadm's token discovery, writes the JoinConfiguration and runs `kubeadm join`,
played by tests/fixtures/kubeadm-standin (no kubeadm or kubelet can be had here), which does
the kubelet's TLS bootstrap; the agent waits for its Node Ready through kubelet.conf."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.qemu.boottest import BootOptions, boot_test
from tests.boot_helpers import BOOT_TIMEOUT, DEVICE, base_image, image_sha256
from tests.conftest import BOOT_AGENT, REPO, pifleet

pytestmark = pytest.mark.slow
STANDIN = REPO / "tests/fixtures/kubeadm-standin"
TOKEN = "abcdef.0123456789abcdef"  # the image's; boot-test's server mints its own


def kubeadm_image(work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    (work / "token").write_text(TOKEN + "\n")
    (work / "token").chmod(0o600)
    (work / "fleet.yaml").write_text(f"""\
name: kubeadm-fleet
arch: arm64
base: {{path: {base_image("arm64")}}}
kubernetes: {{kubeadm: {STANDIN}, kubelet: {STANDIN}, kubectl: {STANDIN}, test_standin: true}}
cluster:
  kind: kubeadm
  server: cp.example.internal:6443
  token_file: token
  ca_cert_hashes: ['sha256:{"7e" * 32}']
  node_labels: {{fleet: boot}}
users:
  - name: ops
    sudo: true
    ssh_authorized_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@laptop']
devices:
  - hostname: {DEVICE}
output: {{dir: out, formats: [img], bmap: false}}
{BOOT_AGENT}""")
    built = pifleet("build", "fleet.yaml", cwd=work, timeout=900)
    assert built.returncode == 0, built.stderr
    image = work / f"{DEVICE}.img"
    made = pifleet(
        "personalize", "out/kubeadm-fleet.img", "--config", "fleet.yaml", "--device", DEVICE,
        "-o", str(image), cwd=work,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return image


def test_a_kubeadm_worker_boots_and_joins(tmp_path: Path) -> None:
    image = kubeadm_image(tmp_path / "build")
    before = image_sha256(image)
    result = boot_test(BootOptions(image=image, timeout=float(BOOT_TIMEOUT), keep=tmp_path / "vm"))
    assert result.passed and result.joined, (result.failure, result.tail())
    assert result.registered == [DEVICE]
    agent = "\n".join(ln for ln in result.console if "pifleet-firstboot:" in ln)
    assert "cluster CA pinned (sha256:" in agent and "token accepted" in agent
    assert "kubeadm: This node has joined the cluster" in agent
    assert f"Node {DEVICE} is Ready" in agent
    assert TOKEN.split(".")[1] not in "\n".join(result.console)
    assert image_sha256(image) == before, "the image was written"
