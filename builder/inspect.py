"""`pifleet inspect`: what is inside an image — partitions, OS flavor, K3s, agent, seed.

The same facts go into manifest.json at build time, so the manifest and
`inspect` of the built image always agree. Nothing secret is shown: for the
token only where it is and its file mode.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from builder.detect.flavor import Flavor, detect, elf_arch
from builder.disk.image import Image
from builder.layout import (
    AGENT_DIR,
    AIRGAP_DIR,
    BIN_DIR,
    K3S_PATH,
    META_DATA,
    UNIT_PATH,
    WANTS_LINK,
)
from builder.seed import cmdline
from builder.seed.formats import FORMATS, SEED_FILES
from builder.steps import join, k3s
from builder.util.console import human_size
from firstboot import joinconfig

# What the facts are read from in the root filesystem, read ahead in one debugfs run.
READS = (
    "/etc/apt/sources.list",
    f"{AGENT_DIR}/firstboot/__init__.py",
    joinconfig.JOIN_CONFIG_PATH,
)
STATS = (
    K3S_PATH,
    *(f"{BIN_DIR}/{t}" for t in k3s.TOOLS),
    AIRGAP_DIR,
    UNIT_PATH,
    WANTS_LINK,
    joinconfig.FLEET_TOKEN_PATH,
)


def collect(path: Path, image: Image | None = None, flavor: Flavor | None = None) -> dict[str, Any]:
    """Facts about the image at `path` (read-only); `image` is `path` when the caller has it open,
    `flavor` what was detected in it."""
    image = image or Image.open(path)
    flavor = flavor or detect(image)
    image.root.prefetch(READS, STATS, [AIRGAP_DIR])
    return {
        "image": {
            "path": str(path),
            "size": path.stat().st_size,
            "partition_table": image.table.scheme,
            "disk_id": image.table.disk_id,
            "partitions": [
                {
                    "number": p.number,
                    "start": p.start,
                    "size": p.size,
                    "type": p.type,
                    "uuid": p.uuid,
                }
                for p in image.table.partitions
            ],
            "boot_label": image.boot.label(),
        },
        "os": {
            "name": flavor.name,
            "pretty_name": flavor.pretty_name,
            "family": flavor.family,
            "codename": flavor.codename,
            "suite": _apt_suite(image),
            "arch": flavor.arch,
            "boot_mount": flavor.boot_mount,
            "cloud_init": flavor.cloud_init,
            "generic_kernel": flavor.generic_kernel,
            "init_format": flavor.init_format,
            "format_reason": flavor.seed.reason if flavor.seed else None,
        },
        "cmdline": _cmdline_facts(image),
        "k3s": _k3s_facts(image),
        "agent": _agent_facts(image),
        "seed": _seed_facts(image, flavor.init_format),
    }


def _apt_suite(image: Image) -> str | None:
    """The suite the first `deb` line of /etc/apt/sources.list installs from: what a pifleet
    base was bootstrapped from (mmdebstrap writes it), and Pi OS's Debian suite."""
    text = (image.root.read("/etc/apt/sources.list") or b"").decode(errors="replace")
    match = re.search(r"^deb\s+(?:\[[^\]]*\]\s+)?\S+\s+(\S+)", text, re.M)
    return match.group(1) if match else None


def _cmdline_facts(image: Image) -> dict[str, Any]:
    raw = image.boot.read(cmdline.CMDLINE) or b""
    line = cmdline.CmdLine.parse(raw)
    return {
        "text": raw.decode(errors="replace").strip(),
        "cgroup_memory": all(flag in line.words for flag in cmdline.CGROUP_FLAGS),
        "nocloud_override": line.nocloud,
    }


def _k3s_facts(image: Image) -> dict[str, Any] | None:
    inode = image.root.stat(K3S_PATH)
    if inode is None:
        return None
    head, digest = image.root.fingerprint(K3S_PATH)
    arch = elf_arch(head, inode.size)
    tools = image.root.stat_many([f"{BIN_DIR}/{t}" for t in k3s.TOOLS])
    airgap = image.root.listdir(AIRGAP_DIR) if image.root.stat(AIRGAP_DIR) else []
    return {
        "path": K3S_PATH,
        "size": inode.size,
        "mode": f"{inode.mode:04o}",
        "arch": arch,
        "test_standin": arch is None,
        "sha256": digest,
        "symlinks": sorted(Path(p).name for p, i in tools.items() if i and i.kind == "symlink"),
        "airgap_images": airgap,
    }


def _agent_facts(image: Image) -> dict[str, Any] | None:
    init = image.root.read(f"{AGENT_DIR}/firstboot/__init__.py")
    if init is None:
        return None
    version = re.search(rb'__version__ = "([^"]+)"', init)
    stats = image.root.stat_many([UNIT_PATH, WANTS_LINK, joinconfig.FLEET_TOKEN_PATH])
    join_raw = image.root.read(joinconfig.JOIN_CONFIG_PATH)
    join_facts: dict[str, Any] | None = None
    if join_raw is not None:
        cfg = joinconfig.load_join_config(join_raw)
        join_facts = {
            "server": cfg.server,
            "role": cfg.role,
            "hostname_pattern": cfg.hostname_pattern,
            "node_labels": cfg.node_labels,
            "node_taints": cfg.node_taints,
        }
    token_inode = stats[joinconfig.FLEET_TOKEN_PATH]
    boot_token = image.boot.read(join.BOOT_TOKEN) is not None
    return {
        "version": version.group(1).decode() if version else None,
        "unit_installed": stats[UNIT_PATH] is not None,
        "enabled": stats[WANTS_LINK] is not None,
        "join": join_facts,
        "token": {
            "root_filesystem": f"{joinconfig.FLEET_TOKEN_PATH} mode {token_inode.mode:04o}"
            if token_inode
            else None,
            "boot_partition": join.BOOT_TOKEN if boot_token else None,
        },
    }


def _seed_facts(image: Image, detected: str) -> dict[str, Any]:
    meta = (image.boot.read(META_DATA) or b"").decode(errors="replace")
    files = [p.lstrip("/") for p in SEED_FILES if image.boot.read(p) is not None]
    facts: dict[str, Any] = {"files": files, "format": written_format(image, files, detected)}
    for key in ("instance-id", "local-hostname"):
        match = re.search(rf"^{key}:\s*\"?([^\"\n]+)\"?\s*$", meta, re.M)
        facts[key] = match.group(1) if match else None
    device = image.boot.read(f"/{joinconfig.BOOT_SUBDIR}/{joinconfig.DEVICE_FILE}")
    facts["device"] = json.loads(device) if device else None
    return facts


def written_format(image: Image, files: list[str], detected: str) -> str | None:
    """The seed format the boot partition carries (a config's seed.format may differ from
    what the image's packages suggest)."""
    line = cmdline.CmdLine.parse(image.boot.read(cmdline.CMDLINE) or b"")
    for fmt in FORMATS:  # each format's sign: its file, and its command-line word if any
        if fmt.sign.lstrip("/") in files and (not fmt.cmdline_key or line.values(fmt.cmdline_key)):
            return detected if detected in fmt.names else fmt.name
    return None


def command(args: argparse.Namespace) -> int:
    facts = collect(Path(args.image))
    if args.json:
        print(json.dumps(facts, indent=2, sort_keys=True))
    else:
        print(format_facts(facts))
    return 0


def format_facts(facts: dict[str, Any]) -> str:
    img, os_, k, ag, seed = facts["image"], facts["os"], facts["k3s"], facts["agent"], facts["seed"]
    lines = [
        f"image      {img['path']} ({human_size(img['size'])}, {img['partition_table']}, disk id {img['disk_id']})"
    ]
    for p in img["partitions"]:
        lines.append(
            f"  p{p['number']}       {human_size(p['size']):>10} at {p['start']:>12}  type {p['type']}  {p['uuid']}"
        )
    suite = f", apt suite {os_['suite']}" if os_.get("suite") else ""
    lines.append(
        f"os         {os_['pretty_name']} — {os_['name']}, boot at {os_['boot_mount']}{suite}"
    )
    lines.append(f"format     {os_['init_format']}: {os_['format_reason']}")
    if seed["format"] != os_["init_format"]:
        lines.append(f"           seed written as {seed['format'] or 'nothing'}")
    lines.append(
        f"cloud-init {'yes' if os_['cloud_init'] else 'no'}; seed files: {', '.join(seed['files']) or 'none'}"
    )
    lines.append(
        f"           instance-id {seed['instance-id']}, hostname {seed['local-hostname'] or '(from hostname_pattern at first boot)'}"
    )
    lines.append(
        f"cmdline    memory cgroup {'enabled' if facts['cmdline']['cgroup_memory'] else 'NOT enabled'}"
    )
    if k is None:
        lines.append("k3s        not installed")
    elif k["test_standin"]:
        lines.append(
            f"k3s        TEST STAND-IN at {k['path']} (not a real K3s; for boot tests only)"
        )
    else:
        lines.append(
            f"k3s        {k['path']} {k['arch']} {human_size(k['size'])} sha256 {k['sha256']}"
        )
    if ag is None:
        lines.append("agent      not installed")
    else:
        state = "enabled" if ag["enabled"] else "not enabled (already joined or disabled)"
        lines.append(f"agent      pifleet-firstboot {ag['version']}, {state}")
        if ag["join"]:
            lines.append(
                f"join       {ag['join']['role']} of {ag['join']['server']}, names itself {ag['join']['hostname_pattern']}"
            )
        where = ag["token"]["root_filesystem"] or ag["token"]["boot_partition"] or "none"
        lines.append(f"token      {where}")
    return "\n".join(lines)
