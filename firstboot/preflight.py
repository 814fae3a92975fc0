"""Checks that make a join pointless when they fail: the memory cgroup and the K3s binary;
and what is worth knowing before K3s runs: the kernel's page size, and whether K3s will give
pods the host's DNS servers.

K3s needs the memory controller. Where the kernel has the unified hierarchy (cgroup v2,
every current Raspberry Pi OS), /sys/fs/cgroup/cgroup.controllers says whether it is
available; /proc/cgroups can say "enabled" while it is not, so it is read only on
cgroup v1 systems. On a Pi the device tree puts cgroup_disable=memory on the kernel
command line and cmdline.txt comes after it, so cmdline.txt needs cgroup_enable=memory
(kernels 6.12 and later ignore the older cgroup_memory=1).

| K3s rule (pod DNS) | K3s file:function |
|---|---|
| without `resolv-conf`, the kubelet gets /etc/resolv.conf, else /run/systemd/resolve/resolv.conf, the first where every nameserver is an IP address that is global unicast (not loopback, link-local such as fe80::/10, multicast or unspecified) and there is at least one | pkg/agent/config/config.go:isValidResolvConf, locateOrGenerateResolvConf |
| neither: K3s writes `nameserver 8.8.8.8` under agent/etc/ and pods use it (no pod DNS on an air-gapped LAN) | config.go:locateOrGenerateResolvConf |
"""

from __future__ import annotations

import ipaddress
import os
from typing import List, Optional

from firstboot.paths import Root

RESOLV_CONFS = ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf")

CGROUP_FIX = (
    "add cgroup_enable=memory to cmdline.txt in the boot partition (the device tree puts "
    "cgroup_disable=memory first and cmdline.txt comes after it; kernels 6.12+ ignore "
    "cgroup_memory=1)"
)


def memory_cgroup_problem(root: Root) -> str:
    """'' when the memory cgroup controller is available, else what is wrong."""
    controllers = root("/sys/fs/cgroup/cgroup.controllers")
    try:
        if "memory" in controllers.read_text().split():
            return ""
        return "the memory cgroup controller is not in /sys/fs/cgroup/cgroup.controllers"
    except FileNotFoundError:
        pass  # no unified hierarchy: a cgroup v1 system
    except OSError:
        return "cannot read /sys/fs/cgroup/cgroup.controllers to check the memory cgroup"
    try:
        for line in root("/proc/cgroups").read_text().splitlines():
            fields = line.split()
            if fields and fields[0] == "memory":
                return "" if fields[-1] == "1" else "the memory cgroup is disabled (/proc/cgroups)"
    except OSError:
        return "cannot read /proc/cgroups to check the memory cgroup"
    return "the kernel has no memory cgroup"


def problems(root: Root, k3s_binary: str, what: str = "K3s") -> List[str]:
    """What stops the join before it starts; `what` names the binary ("K3s", "kubeadm")."""
    found = []
    cgroup = memory_cgroup_problem(root)
    if cgroup:
        found.append(cgroup + ": " + what + " cannot run; " + CGROUP_FIX)
    binary = root(k3s_binary)
    if not binary.is_file():
        found.append("the " + what + " binary " + k3s_binary + " is missing")
    elif not os.access(str(binary), os.X_OK):
        found.append("the " + what + " binary " + k3s_binary + " is not executable")
    return found


def page_size_note() -> str:
    """The kernel's page size, and what a 16K-page kernel (the Pi 5's default) means for K3s."""
    size = os.sysconf("SC_PAGE_SIZE")
    note = "page size " + str(size // 1024) + "K"
    if size > 4096:
        note += (
            ": some container images (jemalloc builds) fail on it; hardware.pi5_4k_pages: true "
            "boots the Pi 5 with kernel8.img (4K pages)"
        )
    return note


def _usable_by_k3s(address: str) -> bool:
    """Go's net.ParseIP(address).IsGlobalUnicast() (zones such as %eth0 do not parse)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    broadcast = ip == ipaddress.IPv4Address("255.255.255.255")
    return not (
        ip.is_unspecified or ip.is_loopback or ip.is_link_local or ip.is_multicast or broadcast
    )


def _nameservers(root: Root, path: str) -> Optional[List[str]]:
    try:
        lines = root(path).read_text(errors="replace").splitlines()
    except OSError:
        return None
    return [f[1] for f in (line.split() for line in lines) if len(f) > 1 and f[0] == "nameserver"]


def pod_dns_warning(root: Root, kubelet_args: List[str]) -> str:
    """'' when K3s will hand pods one of the host's resolv.conf files, else a one-line warning."""
    if any(arg.startswith("resolv-conf=") for arg in kubelet_args):
        return ""
    seen = []
    for path in RESOLV_CONFS:
        servers = _nameservers(root, path)
        if servers and all(_usable_by_k3s(s) for s in servers):
            return ""
        if servers is not None:
            seen.append(path + " (" + (", ".join(servers) or "no nameserver") + ")")
    return (
        "K3s will give pods nameserver 8.8.8.8 (no pod DNS without Internet): "
        + ("; ".join(seen) or "no /etc/resolv.conf")
        + " has no usable nameserver (link-local, loopback, multicast are not); set "
        "cluster.kubelet_args resolv-conf=PATH (K3s's resolv-conf) to a routable one"
    )
