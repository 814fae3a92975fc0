"""Checks that make a join pointless when they fail: the memory cgroup and the K3s binary."""

from __future__ import annotations

import os
from typing import List

from firstboot.paths import Root


def memory_cgroup_problem(root: Root) -> str:
    """'' when the memory cgroup controller is enabled, else what is wrong."""
    controllers = root("/sys/fs/cgroup/cgroup.controllers")
    try:
        if "memory" in controllers.read_text().split():
            return ""
        return "the memory cgroup controller is not enabled (cgroup v2)"
    except OSError:
        pass
    try:
        for line in root("/proc/cgroups").read_text().splitlines():
            fields = line.split()
            if fields and fields[0] == "memory":
                return "" if fields[-1] == "1" else "the memory cgroup is disabled (/proc/cgroups)"
    except OSError:
        return "cannot read /proc/cgroups to check the memory cgroup"
    return "the kernel has no memory cgroup"


def problems(root: Root, k3s_binary: str) -> List[str]:
    found = []
    cgroup = memory_cgroup_problem(root)
    if cgroup:
        found.append(
            cgroup + ": K3s needs cgroup_memory=1 cgroup_enable=memory in cmdline.txt "
            "(some Pi 5 kernels ignore them; check /proc/cgroups)"
        )
    binary = root(k3s_binary)
    if not binary.is_file():
        found.append("the K3s binary " + k3s_binary + " is missing")
    elif not os.access(str(binary), os.X_OK):
        found.append("the K3s binary " + k3s_binary + " is not executable")
    return found
