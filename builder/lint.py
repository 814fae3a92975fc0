"""`pifleet lint IMAGE`: check what a build wrote before anything is flashed (also the last
step of every build). One line per problem, exit 1 if there is any.

| what               | check                                                                      |
|--------------------|----------------------------------------------------------------------------|
| user-data          | `cloud-init schema --config-file`, when cloud-init is installed on the host |
| network-config     | YAML with `network: {version: 2}`                                          |
| rpi-preseed.toml   | TOML, against pifleet's schema of rpi-preseed's keys                       |
| firstrun.sh        | `sh -n` (shell syntax)                                                     |
| cmdline.txt        | one line; `root=` names a partition of this image; `cgroup_enable=memory`  |
| /usr/local/bin/k3s | an ELF for the image's architecture (a test stand-in only when allowed)    |
| config.txt         | every line a `[filter]`, `key=value`, `include`/`initramfs`, or a comment   |
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import yaml

from builder.disk.flavor import detect, elf_arch
from builder.disk.image import Image
from builder.seed.checks import cloud_config_problems, preseed_problems
from builder.steps import cmdline, config_txt, k3s

CONFIG_LINE = re.compile(r"^(\[[^\]]+\]|[A-Za-z0-9_]+=.*|(include|initramfs)\s+\S.*)$")


def problems(path: Path, allow_standin: bool = False) -> list[str]:
    image = Image.open(path)
    found = _seed(image)
    found += _cmdline(image)
    found += _k3s(image, allow_standin)
    found += _config_txt(image)
    return found


def _seed(image: Image) -> list[str]:
    found = []
    user_data = image.boot.read("/user-data")
    if user_data is not None:
        found += [f"user-data: {p}" for p in cloud_config_problems(user_data) or []]
    network = image.boot.read("/network-config")
    if network is not None:
        try:
            doc = yaml.safe_load(network)
        except yaml.YAMLError as exc:
            doc = None
            found.append(f"network-config: not YAML: {str(exc).splitlines()[0]}")
        if doc is not None and (
            not isinstance(doc, dict) or doc.get("network", {}).get("version") != 2
        ):
            found.append("network-config: expected network: {version: 2, ...}")
    preseed = image.boot.read("/rpi-preseed.toml")
    if preseed is not None:
        found += [f"rpi-preseed.toml: {p}" for p in preseed_problems(preseed)]
    script = image.boot.read("/firstrun.sh")
    if script is not None:
        check = subprocess.run(["sh", "-n"], input=script, capture_output=True)
        if check.returncode != 0:
            message = check.stderr.decode(errors="replace").strip().splitlines()
            found.append(f"firstrun.sh: {message[0] if message else 'shell syntax error'}")
    return found


def _cmdline(image: Image) -> list[str]:
    raw = image.boot.read(cmdline.CMDLINE)
    if raw is None:
        return ["cmdline.txt: missing from the boot partition"]
    text = raw.decode(errors="replace")
    found = []
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) != 1:
        found.append(f"cmdline.txt: {len(lines)} lines; the firmware reads only the first")
    words = text.split()
    if "cgroup_enable=memory" not in words:
        found.append("cmdline.txt: no cgroup_enable=memory (K3s needs the memory controller)")
    roots = [w.removeprefix("root=") for w in words if w.startswith("root=")]
    if not roots:
        found.append("cmdline.txt: no root=")
    elif not _root_matches(image, roots[-1]):
        found.append(f"cmdline.txt: root={roots[-1]} is not this image's root partition")
    return found


def _root_matches(image: Image, root: str) -> bool:
    part = image.root_partition
    if root.upper().startswith("PARTUUID="):
        return root.split("=", 1)[1].lower() == part.uuid.lower()
    if root.upper().startswith("LABEL="):
        return root.split("=", 1)[1] == ext4_label(image.path, part.start)
    match = re.match(r"^/dev/(mmcblk\d+p|sd[a-z]|vd[a-z]|nvme\d+n\d+p)(\d+)$", root)
    return match is not None and int(match.group(2)) == part.number


def ext4_label(path: Path, start: int) -> str:
    """s_volume_name: 16 bytes at offset 0x78 of the superblock, which starts 1024 bytes in."""
    with open(path, "rb") as f:
        f.seek(start + 1024 + 0x78)
        return f.read(16).split(b"\0", 1)[0].decode(errors="replace")


def _k3s(image: Image, allow_standin: bool) -> list[str]:
    if image.root.stat(k3s.K3S_PATH) is None:
        return []
    head, _ = image.root.fingerprint(k3s.K3S_PATH)
    arch, want = elf_arch(head), detect(image).arch
    if arch is None:
        return [] if allow_standin else [f"{k3s.K3S_PATH}: not an ELF binary (a test stand-in?)"]
    if arch != want:
        return [f"{k3s.K3S_PATH}: binary is {arch} but the image is {want}"]
    return []


def _config_txt(image: Image) -> list[str]:
    raw = image.boot.read(config_txt.CONFIG_TXT)
    if raw is None:
        return []
    found = []
    for number, line in enumerate(raw.decode(errors="replace").splitlines(), 1):
        body = line.strip()
        if body and not body.startswith("#") and not CONFIG_LINE.match(body):
            found.append(f"config.txt:{number}: not a [filter] or key=value line: {body!r}")
    return found


def command(args: argparse.Namespace) -> int:
    found = problems(Path(args.image), allow_standin=args.test_standin)
    for problem in found:
        print(f"{args.image}: {problem}")
    return 1 if found else 0
