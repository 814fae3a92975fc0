"""`pifleet build` of a kubeadm worker fleet (builder/steps/kubernetes.py, containerd.py): the
Kubernetes binaries, the kubelet's unit and drop-in, the system settings kubeadm's preflight
checks, swap off, and containerd and runc from Debian's packages for the image's release
(fetched and verified by apt from Debian's archive, cached) with the systemd cgroup driver.
Every refusal is one line, exit 2, naming the key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from builder.disk.image import Image
from tests.conftest import fleet_yaml, pifleet
from tests.http_fixture import AssetServer
from tests.layouts import elf_for

TOKEN = "abcdef.0123456789abcdef"
PIN = "sha256:" + "7e" * 32
STANDIN = Path(__file__).resolve().parent / "fixtures" / "kubeadm-standin"
CLUSTER = (
    "cluster:\n  kind: kubeadm\n  server: cp.example.net:6443\n  token_file: token\n"
    f"  ca_cert_hashes: ['{PIN}']\n  kubelet_args: ['max-pods=50']\n"
)


def binaries(**paths: str) -> str:
    found = {"kubeadm": str(STANDIN), "kubelet": str(STANDIN), "kubectl": str(STANDIN), **paths}
    lines = "".join(f"  {k}: {v}\n" for k, v in found.items())
    return "kubernetes:\n" + lines + ("" if "test_standin" in paths else "  test_standin: true\n")


@pytest.fixture
def kubeadm_dir(fleet_dir: Path) -> Path:
    (fleet_dir / "fleet.yaml").write_text(
        fleet_yaml(k3s="", cluster=CLUSTER, kubernetes=binaries())
    )
    (fleet_dir / "token").write_text(TOKEN + "\n")
    return fleet_dir


def build(where: Path) -> Image:
    done = pifleet("build", "fleet.yaml", cwd=where, timeout=600)
    assert done.returncode == 0, done.stderr
    assert TOKEN.split(".")[1] not in done.stdout + done.stderr
    return Image.open(where / "out" / "edge-fleet.img")


def test_a_kubeadm_worker_image(kubeadm_dir: Path) -> None:
    root = build(kubeadm_dir).root
    for name in ("kubeadm", "kubelet", "kubectl"):
        inode = root.stat(f"/usr/bin/{name}")
        assert inode is not None and (inode.mode & 0o7777, inode.uid) == (0o755, 0)
    assert root.stat("/usr/local/bin/k3s") is None, "K3s in a kubeadm image"
    unit = (root.read("/usr/lib/systemd/system/kubelet.service") or b"").decode()
    assert "ExecStart=/usr/bin/kubelet\n" in unit and "Restart=always" in unit
    drop_in = root.read("/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf") or b""
    assert b"EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env" in drop_in
    assert b"ExecStart=\nExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS" in drop_in
    wants = root.stat("/etc/systemd/system/multi-user.target.wants/kubelet.service")
    assert wants is not None and wants.link_target == "/usr/lib/systemd/system/kubelet.service"
    sysctl = (root.read("/etc/sysctl.d/99-pifleet-kubernetes.conf") or b"").decode()
    assert "net.ipv4.ip_forward = 1" in sysctl and "bridge-nf-call-iptables = 1" in sysctl
    assert b"br_netfilter" in (root.read("/etc/modules-load.d/pifleet-kubernetes.conf") or b"")
    swap = root.stat("/etc/systemd/system/swap.target")
    assert swap is not None and swap.link_target == "/dev/null"
    join = json.loads(root.read("/etc/pifleet/join.json") or b"{}")
    assert (join["kind"], join["ca_cert_hashes"]) == ("kubeadm", [PIN])
    assert join["kubeadm_binary"] == "/usr/bin/kubeadm"


def test_containerd_and_runc_from_debian_with_the_systemd_cgroup_driver(
    kubeadm_dir: Path,
) -> None:
    root = build(kubeadm_dir).root
    for path in ("/usr/bin/containerd", "/usr/sbin/runc"):
        inode = root.stat(path)
        assert inode is not None and inode.mode & 0o111, path
    head = root.fingerprint("/usr/bin/containerd")[0]
    assert head[:4] == b"\x7fELF" and head[18:20] == b"\xb7\x00", "not an arm64 ELF"
    config = (root.read("/etc/containerd/config.toml") or b"").decode()
    assert "version = 2" in config and "SystemdCgroup = true" in config
    status = (root.read("/var/lib/dpkg/status") or b"").decode()
    for package in ("containerd", "runc"):
        stanza = next(s for s in status.split("\n\n") if f"Package: {package}\n" in s + "\n")
        assert "Status: install ok installed" in stanza and "Architecture: arm64" in stanza
    listed = (root.read("/var/lib/dpkg/info/containerd.list") or b"").decode().splitlines()
    assert "/usr/bin/containerd" in listed
    unit = root.stat("/etc/systemd/system/multi-user.target.wants/containerd.service")
    assert unit is not None and root.stat(unit.link_target or "") is not None


def refused(where: Path, needle: str) -> None:
    done = pifleet("build", "fleet.yaml", cwd=where, timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("pifleet: error: ")]
    assert len(errors) == 1 and needle in errors[0], done.stderr
    assert done.stderr.splitlines()[-1] == errors[0] and "Traceback" not in done.stderr
    assert not (where / "out" / "edge-fleet.img").exists()


def test_a_script_without_test_standin_is_not_a_kubelet(kubeadm_dir: Path) -> None:
    (kubeadm_dir / "fleet.yaml").write_text(
        fleet_yaml(k3s="", cluster=CLUSTER, kubernetes=binaries(test_standin="false"))
    )
    refused(kubeadm_dir, "kubernetes.kubeadm: not an ELF executable, so not a kubeadm binary")


def test_a_binary_for_another_architecture_is_named(kubeadm_dir: Path) -> None:
    (kubeadm_dir / "fleet.yaml").write_text(
        fleet_yaml(k3s="", cluster=CLUSTER, kubernetes=binaries(kubelet=str(elf_for("armhf"))))
    )
    refused(
        kubeadm_dir, "kubernetes.kubelet: the kubelet binary is armhf (ARM) but the image is arm64"
    )


def test_a_binary_that_does_not_match_its_sha256_is_named(kubeadm_dir: Path) -> None:
    sums = "  sha256: {kubectl: '" + "0" * 64 + "'}\n"
    (kubeadm_dir / "fleet.yaml").write_text(
        fleet_yaml(k3s="", cluster=CLUSTER, kubernetes=binaries() + sums)
    )
    refused(kubeadm_dir, "kubernetes.kubectl")


def test_a_missing_binary_is_named(kubeadm_dir: Path) -> None:
    (kubeadm_dir / "fleet.yaml").write_text(
        fleet_yaml(k3s="", cluster=CLUSTER, kubernetes=binaries(kubeadm="nowhere/kubeadm"))
    )
    refused(kubeadm_dir, "kubernetes.kubeadm")


def test_a_release_is_downloaded_and_checked_against_its_sha256_files(fleet_dir: Path) -> None:
    """`kubernetes.version`: each binary from <release_url>/<version>/bin/linux/arm64/ with
    its .sha256 file (dl.k8s.io's layout), served here by a real server on 127.0.0.1."""
    data = STANDIN.read_bytes()
    base = "/release/v1.34.1/bin/linux/arm64"
    files = {f"{base}/{n}": data for n in ("kubeadm", "kubelet", "kubectl")}
    files |= {f"{base}/{n}.sha256": hashlib.sha256(data).hexdigest().encode() for n in
              ("kubeadm", "kubelet")}  # fmt: skip
    files[f"{base}/kubectl.sha256"] = hashlib.sha256(b"something else").hexdigest().encode()
    with AssetServer(files=files) as server:
        release = f"kubernetes: {{version: v1.34.1, release_url: '{server.url}/release', test_standin: true}}"
        (fleet_dir / "fleet.yaml").write_text(
            fleet_yaml(k3s="", cluster=CLUSTER, kubernetes=release)
        )
        (fleet_dir / "token").write_text(TOKEN + "\n")
        refused(fleet_dir, "sha256 mismatch for " + f"{server.url}{base}/kubectl")
        files[f"{base}/kubectl.sha256"] = hashlib.sha256(data).hexdigest().encode()
        root = build(fleet_dir).root
        assert server.count(f"{base}/kubelet.sha256") == 2  # read each build (binaries are cached)
    assert (root.read("/usr/bin/kubelet") or b"") == data
    manifest = json.loads((fleet_dir / "out" / "manifest.json").read_text())
    origins = {i["role"]: i for i in manifest["inputs"] if i["role"].startswith("kube")}
    assert origins["kubeadm"]["origin"] == f"{server.url}{base}/kubeadm"
