"""A kubeadm worker's image (`cluster.kind: kubeadm`): the Kubernetes binaries, the kubelet's
unit as upstream's packages install it, and the system settings kubeadm's preflight checks.

| what | where | source |
|---|---|---|
| kubeadm, kubelet, kubectl, 0755 root, each an ELF for the image's architecture (a `#!` script only with `kubernetes.test_standin`) and its sha256 when given | /usr/bin | kubernetes/release cmd/krel/templates/latest/{kubeadm,kubelet,kubectl}/*.spec (`%{_bindir}`) |
| kubelet.service: `ExecStart=/usr/bin/kubelet`, Restart=always, StartLimitInterval=0, RestartSec=10, after network-online.target, wanted by multi-user.target and enabled (it restarts until kubeadm join configures it) | /usr/lib/systemd/system | kubelet.spec (`%{_unitdir}`), the kubelet package's unit |
| 10-kubeadm.conf: the bootstrap kubeconfig and kubeconfig, --config=/var/lib/kubelet/config.yaml, the EnvironmentFiles kubeadm-flags.env and /etc/default/kubelet, ExecStart with their variables | /usr/lib/systemd/system/kubelet.service.d | kubeadm.spec |
| the modules overlay and br_netfilter at boot | /etc/modules-load.d/pifleet-kubernetes.conf | kubernetes.io "Container Runtimes" (forwarding IPv4, letting iptables see bridged traffic) |
| net.ipv4.ip_forward=1 (kubeadm's preflight FileContent check), bridge-nf-call-iptables/ip6tables=1 | /etc/sysctl.d/99-pifleet-kubernetes.conf | the same; kubeadm app/preflight/checks.go |
| swap off: the kubelet refuses to start with swap (failSwapOn): swap.target, dphys-swapfile (Bookworm) and zram's setup masked | /etc/systemd/system/*.service -> /dev/null | kubelet's failSwapOn; pi-gen stage2 (dphys-swapfile; Trixie's rpi-swap, not read here, acts through swap units) |

The container runtime (containerd, runc) is not added by this step yet.
"""

from __future__ import annotations

from builder.disk.entries import Directory, File, Symlink
from builder.disk.image import Image
from builder.plan import Plan
from builder.steps.elfcheck import check_binary
from builder.util.errors import UserError

BIN = "/usr/bin"
UNIT_DIR = "/usr/lib/systemd/system"
KUBELET_UNIT = f"{UNIT_DIR}/kubelet.service"
DROP_IN = f"{UNIT_DIR}/kubelet.service.d/10-kubeadm.conf"
WANTS = "/etc/systemd/system/multi-user.target.wants/kubelet.service"
MODULES = "/etc/modules-load.d/pifleet-kubernetes.conf"
SYSCTL = "/etc/sysctl.d/99-pifleet-kubernetes.conf"
SWAP_UNITS = ("swap.target", "dphys-swapfile.service", "systemd-zram-setup@zram0.service")

UNIT = """\
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
"""
KUBEADM_DROP_IN = """\
# Installed by pifleet as the kubeadm package installs it (kubelet v1.11 and later).
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# kubeadm join writes KUBELET_KUBEADM_ARGS here
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# the last resort for KUBELET_EXTRA_ARGS (JoinConfiguration's kubeletExtraArgs come first)
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
"""
MODULES_TEXT = "# Written by pifleet: what the kubelet's pods need\noverlay\nbr_netfilter\n"
SYSCTL_TEXT = (
    "# Written by pifleet: what kubeadm's preflight and the pod network need\n"
    "net.ipv4.ip_forward = 1\n"
    "net.bridge.bridge-nf-call-iptables = 1\n"
    "net.bridge.bridge-nf-call-ip6tables = 1\n"
)


def apply(image: Image, plan: Plan) -> None:
    check(plan)
    for binary in plan.kubernetes:
        image.root.stage(File(f"{BIN}/{binary.role}", 0o755, source=binary.path))
    image.root.stage(File(KUBELET_UNIT, 0o644, data=UNIT.encode()))
    image.root.stage(Directory(f"{UNIT_DIR}/kubelet.service.d", 0o755))
    image.root.stage(File(DROP_IN, 0o644, data=KUBEADM_DROP_IN.encode()))
    image.root.stage(Symlink(WANTS, KUBELET_UNIT))
    image.root.stage(File(MODULES, 0o644, data=MODULES_TEXT.encode()))
    image.root.stage(File(SYSCTL, 0o644, data=SYSCTL_TEXT.encode()))
    for unit in SWAP_UNITS:
        image.root.stage(Symlink(f"/etc/systemd/system/{unit}", "/dev/null"))


def check(plan: Plan) -> None:
    """Each binary an ELF for the image (found and sha256-checked by the plan), before the
    base is copied."""
    binaries = plan.config.kubernetes
    if binaries is None or not plan.kubernetes:  # the reader requires them with kind kubeadm
        raise UserError(f"{plan.config.where('kubernetes')}: required with cluster.kind: kubeadm")
    for binary in plan.kubernetes:
        where = plan.config.where(f"kubernetes.{binary.role}")
        try:
            with open(binary.path, "rb") as f:
                header = f.read(64)
        except OSError as exc:
            raise UserError(f"{where}: cannot read {binary.path}: {exc.strerror}") from None
        check_binary(
            header, binary.role, where, plan.config.arch, binaries.test_standin,
            "kubernetes.test_standin",
        )  # fmt: skip
