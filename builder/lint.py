"""`pifleet lint IMAGE`: check what a build wrote before anything is flashed (also the last
step of every build). One line per problem, exit 1 if there is any.

| what               | check                                                                      |
|--------------------|----------------------------------------------------------------------------|
| user-data          | the schema of the cloud-init the image ships (see `user_data_problems`)     |
| network-config     | YAML with `network: {version: 2}`                                          |
| rpi-preseed.toml   | TOML, against pifleet's schema of rpi-preseed's keys                       |
| firstrun.sh        | `sh -n` (shell syntax)                                                     |
| cmdline.txt        | one line; `root=` names a partition of this image; `cgroup_enable=memory`  |
| /usr/local/bin/k3s | an ELF for the image's architecture (a test stand-in only when allowed)    |
| config.txt         | every line a `[filter]`, `key=value`, `include`/`initramfs`, or a comment   |
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import threading
from concurrent.futures import Future
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema import Draft4Validator

from builder.detect import dpkg
from builder.detect.flavor import Flavor, detect, elf_arch
from builder.disk.image import Image
from builder.layout import FIRSTRUN, K3S_PATH, NETWORK_CONFIG, PRESEED, USER_DATA
from builder.seed import cmdline
from builder.seed.checks import cloud_config_problems, preseed_problems
from builder.steps import config_txt

log = logging.getLogger("pifleet.lint")
# Where Debian, Ubuntu and Raspberry Pi OS install the schema of the cloud-init they ship.
CLOUD_INIT_SCHEMA = (
    "/usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json"
)
CONFIG_LINE = re.compile(r"^(\[[^\]]+\]|[A-Za-z0-9_]+=.*|(include|initramfs)\s+\S.*)$")


# What lint reads from the root filesystem, read ahead in one debugfs run.
READS = (CLOUD_INIT_SCHEMA, dpkg.STATUS)
STATS = (K3S_PATH,)


def problems(path: Path, allow_standin: bool = False) -> list[str]:
    return image_problems(Image.open(path), allow_standin)


def image_problems(
    image: Image, allow_standin: bool = False, flavor: Flavor | None = None
) -> list[str]:
    """The problems of an open image; `flavor` when the caller already detected it."""
    image.root.prefetch(READS, STATS)
    found = _seed(image)
    found += _cmdline(image)
    found += _k3s(image, allow_standin, flavor)
    found += _config_txt(image)
    return found


def _seed(image: Image) -> list[str]:
    found = []
    user_data = image.boot.read(USER_DATA)
    if user_data is not None:
        found += [f"user-data: {p}" for p in user_data_problems(image, user_data)]
    network = image.boot.read(NETWORK_CONFIG)
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
    preseed = image.boot.read(PRESEED)
    if preseed is not None:
        found += [f"rpi-preseed.toml: {p}" for p in preseed_problems(preseed)]
    script = image.boot.read(FIRSTRUN)
    if script is not None:
        check = subprocess.run(["sh", "-n"], input=script, capture_output=True)
        if check.returncode != 0:
            message = check.stderr.decode(errors="replace").strip().splitlines()
            found.append(f"firstrun.sh: {message[0] if message else 'shell syntax error'}")
    return found


def user_data_problems(image: Image, data: bytes) -> list[str]:
    """user-data judged by the cloud-init that will read it: the image's, not the host's.

    Hosts and images differ: Debian 12 has cloud-init 22.4, Pi OS Trixie 25.2, Ubuntu 24.04
    24.4, and the schemas differ between them (24.1 dropped `dsa` from ssh_genkeytypes; 23.4
    to 25.1 refuse the top-level `rpi:` key that 25.2 added, cc_raspberry_pi). The rule:

    1. When the image ships cloud-init's schema, `cloudinit/config/schemas/
       schema-cloud-config-v1.json` (the file `cloud-init schema` of that version reads,
       versioned since cloud-init 22.2), user-data is validated against that file as
       cloud-init's `validate_cloudconfig_schema` does (cloudinit/config/schema.py, 22.4 to
       25.2): JSON Schema draft 4, bytes accepted as strings, a top-level unknown key named by
       its own name; `deprecated` keys are warnings there, so no problem here.
    2. Otherwise the host's `cloud-init schema` judges, but only when the host's cloud-init is
       the same release (YY.N) as the one in the image's dpkg database.
    3. Otherwise (another release, or the image's version unknown) nothing judges user-data;
       the log says so. A host's older or newer schema would fail good seeds or pass bad ones.
    """
    shipped = _shipped_schema(image)
    if shipped is not None:
        release, schema = shipped
        problems = cloud_config_schema_problems(data, schema)
        if problems is not None:
            return [f"{p} (cloud-init {release}'s schema)" for p in problems]
    image_release = _release(_shipped_version(image))
    host_release = _release(_host_version())
    if image_release is None or image_release != host_release:
        log.info(
            "user-data: not checked: the image ships cloud-init %s without its schema, and this "
            "host has %s",
            image_release or "(unknown version)",
            host_release or "no cloud-init",
        )
        return []
    return cloud_config_problems(data) or []


def cloud_config_schema_problems(data: bytes, schema: dict[str, Any]) -> list[str] | None:
    """One line per error cloud-init's own validation finds in `data` against `schema` (a
    cloud-init schema-cloud-config-v1.json); None when the schema itself cannot be used."""
    if not data.startswith(b"#cloud-config"):
        return ['does not start with "#cloud-config"']
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        return [f"not YAML: {str(exc).splitlines()[0]}"]
    if doc is None:
        return []  # a bare "#cloud-config" (pi-gen's template): nothing to apply
    if not isinstance(doc, dict):
        return [f"a cloud-config is a mapping, not {type(doc).__name__}"]
    try:
        validator = _cloud_init_validator()(schema, format_checker=Draft4Validator.FORMAT_CHECKER)
        errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.path])
    except Exception as exc:  # a damaged or unusual schema in the image: judge without it
        log.info("user-data: the image's cloud-init schema cannot be used: %s", exc)
        return None
    lines = []
    for error in errors:
        where = ".".join(str(p) for p in error.path)
        unexpected = re.match(r".*\('(?P<name>.*)' was unexpected\)", error.message)
        if not where and error.validator == "additionalProperties" and unexpected:
            where = unexpected["name"]  # as cloud-init names an unknown top-level key
        lines.append(f"{where or '(top)'}: {error.message}")
    return lines


@lru_cache(maxsize=1)
def _cloud_init_validator() -> Any:
    """Draft 4 with cloud-init's one change that matters for errors: bytes (YAML !!binary)
    pass as strings (get_jsonschema_validator in cloudinit/config/schema.py)."""
    checker = Draft4Validator.TYPE_CHECKER.redefine(
        "string", lambda _checker, value: isinstance(value, str | bytes)
    )
    extend: Any = jsonschema.validators.extend  # untyped in jsonschema's stubs
    return extend(Draft4Validator, type_checker=checker)


def _shipped_schema(image: Image) -> tuple[str, dict[str, Any]] | None:
    """(cloud-init release, its schema) read from the image, when the image ships both."""
    raw = image.root.read(CLOUD_INIT_SCHEMA)
    if raw is None or len(raw) > 16 * 1024 * 1024:
        return None
    try:
        schema = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(schema, dict):
        return None
    return _release(_shipped_version(image)) or "(unknown version)", schema


def _shipped_version(image: Image) -> str | None:
    status = image.root.read(dpkg.STATUS)
    version = dpkg.version_of(status, "cloud-init") if status else None
    return dpkg.upstream(version) if version else None


_asked: Future[str | None] | None = None


def ask_host_version() -> None:
    """Start asking the host's cloud-init its version, which takes a Python start-up (0.2 s),
    in the background: a build calls this before its copy, so lint need not wait for it."""
    global _asked
    if _asked is None:
        _asked = Future()
        threading.Thread(target=_answer, args=(_asked,), daemon=True).start()


def _answer(future: Future[str | None]) -> None:
    try:
        future.set_result(_run_host_version())
    except Exception as exc:  # handed to the caller of _host_version
        future.set_exception(exc)


def _host_version() -> str | None:
    return _asked.result() if _asked is not None else _run_host_version()


def _run_host_version() -> str | None:
    tool = shutil.which("cloud-init")
    if tool is None:
        return None
    try:
        proc = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = (proc.stdout + " " + proc.stderr).split()
    return next((w for w in words if re.fullmatch(r"\d+\.\d+(\.\d+)?", w)), None)


def _release(version: str | None) -> str | None:
    """'25.2.1' -> '25.2': cloud-init's releases are YY.N; a third part is a bug-fix."""
    match = re.match(r"(\d+\.\d+)", version or "")
    return match.group(1) if match else None


def _cmdline(image: Image) -> list[str]:
    line = cmdline.read(image.boot)
    if line is None:
        return ["cmdline.txt: missing from the boot partition"]
    found = []
    if line.lines != 1:
        found.append(f"cmdline.txt: {line.lines} lines; the firmware reads only the first")
    if "cgroup_enable=memory" not in line.words:
        found.append("cmdline.txt: no cgroup_enable=memory (K3s needs the memory controller)")
    roots = line.values("root")
    if not roots:
        found.append("cmdline.txt: no root=")
    elif not _root_matches(image, roots[-1]):
        found.append(f"cmdline.txt: root={roots[-1]} is not this image's root partition")
    return found


def root_problem(image: Image) -> str | None:
    """The line `pifleet lint` gives when cmdline.txt's root= names another partition than the
    image's root filesystem, with the partition it should name. A base like that (converted to
    GPT, or copied from another image, without its cmdline.txt) is bad input: the build checks
    it before copying the base, and no step changes which partition root= names."""
    wrong = [p for p in _cmdline(image) if " is not this image's root partition" in p]
    if not wrong:
        return None
    part = image.root_partition
    return f"{wrong[0]} (partition {part.number}, PARTUUID={part.uuid})"


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


def _k3s(image: Image, allow_standin: bool, flavor: Flavor | None) -> list[str]:
    if image.root.stat(K3S_PATH) is None:
        return []
    head, _ = image.root.fingerprint(K3S_PATH)
    arch, want = elf_arch(head), (flavor or detect(image)).arch
    if arch is None:
        return [] if allow_standin else [f"{K3S_PATH}: not an ELF binary (a test stand-in?)"]
    if arch != want:
        return [f"{K3S_PATH}: binary is {arch} but the image is {want}"]
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
