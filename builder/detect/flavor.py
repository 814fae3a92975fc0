"""Which OS is inside an image: family, release, architecture, boot mount, seed format.

Everything is read from the image itself (os-release, fstab, the ELF header of
a system binary), never assumed from a file name.
"""

from __future__ import annotations

import shlex
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from builder.detect import dpkg
from builder.detect.osformat import CLOUD_CFG_D, MARKERS, FormatFacts, detect_format
from builder.disk.image import Image
from builder.layout import FSTAB
from builder.seed.base import ImageTraits
from builder.seed.formats import BY_NAME
from builder.util.errors import UserError

EM_ARM = 40
EM_AARCH64 = 183
EF_ARM_ABI_FLOAT_HARD = 0x400
SUPPORTED = (
    "Raspberry Pi OS Bookworm or later, Ubuntu Server for Raspberry Pi, "
    "or a pifleet test base (see `pifleet images`)"
)

Family = Literal["raspios", "ubuntu", "debian"]


@dataclass(frozen=True)
class Flavor:
    family: Family
    codename: str
    pretty_name: str
    arch: str  # arm64 | armhf
    boot_mount: str  # where the FAT partition is mounted on the device
    cloud_init: bool
    generic_kernel: bool  # carries /boot/vmlinuz: bootable under QEMU -M virt
    seed: FormatFacts | None = None  # the first-boot format the image understands
    detected_seed: FormatFacts | None = None  # the format detected, when the config chose another

    def as_detected(self) -> Flavor:
        """This flavor as the image says, before a config's seed.format chose another format."""
        if self.detected_seed is None:
            return self
        return replace(self, seed=self.detected_seed, detected_seed=None)

    @property
    def init_format(self) -> str:
        """Raspberry Pi Imager's name for the seed format: cloudinit, cloudinit-rpi, systemd..."""
        return self.seed.format if self.seed else ("cloudinit" if self.cloud_init else "systemd")

    @property
    def name(self) -> str:
        label = {"raspios": "Raspberry Pi OS", "ubuntu": "Ubuntu", "debian": "Debian"}[self.family]
        return f"{label} {self.codename} ({self.arch})"


# Everything `detect` reads, read ahead in one debugfs run. /usr/lib/os-release is where
# /etc/os-release links to (os-release(5)): its target is then read in the same run.
READS = ("/etc/os-release", "/usr/lib/os-release", "/usr/bin/env", FSTAB, dpkg.STATUS)
STATS = ("/etc/rpi-issue", "/usr/bin/cloud-init", "/boot/vmlinuz", *MARKERS.values(), CLOUD_CFG_D)


def detect(image: Image) -> Flavor:
    image.root.prefetch(READS, STATS, [CLOUD_CFG_D])
    os_release = parse_os_release(image.root.read("/etc/os-release") or b"")
    if not os_release:
        damaged = image.root.open_problem()
        if damaged is not None:
            raise UserError(
                f"{image.path}: the root filesystem (partition {image.root_partition.number}) "
                f"is damaged: {damaged}; check it with: e2fsck -f '{image.root.spec}'"
            )
        raise UserError(
            f"{image.path}: no /etc/os-release in the root filesystem: not a Linux image"
        )
    root = image.root
    exists = root.stat_many(["/etc/rpi-issue", "/usr/bin/cloud-init", "/boot/vmlinuz"])
    if os_release.get("ID") == "ubuntu":
        family: Family = "ubuntu"
    elif os_release.get("ID") == "raspbian" or exists["/etc/rpi-issue"] is not None:
        family = "raspios"
    else:
        family = "debian"
    codename = os_release.get("VERSION_CODENAME") or os_release.get("VERSION_ID", "unknown")
    return Flavor(
        family=family,
        codename=codename,
        pretty_name=os_release.get("PRETTY_NAME", codename),
        arch=_arch(image),
        boot_mount=_boot_mount(image, codename),
        cloud_init=exists["/usr/bin/cloud-init"] is not None,
        generic_kernel=exists["/boot/vmlinuz"] is not None,
        seed=detect_format(image, os_release.get("ID", ""), exists["/etc/rpi-issue"] is not None),
    )


def require_supported(flavor: Flavor, image_path: Path, override: str | None = None) -> Flavor:
    """The flavor with the seed format to write (`override`: the config's seed.format); refuses a
    format the image cannot run."""
    seed = flavor.seed
    if seed is None or override is None or override == seed.format:
        return flavor
    package = BY_NAME[override].needs if override in BY_NAME else None
    if package is not None and package not in seed.packages:
        raise UserError(
            f"{image_path}: seed.format {override} needs {package}, which {flavor.name} lacks "
            f"(detected: {seed.format})"
        )
    chosen = replace(seed, format=override, reason="seed.format in the config")
    return replace(flavor, seed=chosen, detected_seed=seed)


def seed_traits(flavor: Flavor) -> ImageTraits:
    """What the seed renderers need to know of the image: its format, boot mount, helpers."""
    seed = flavor.seed
    return ImageTraits(
        format=flavor.init_format,
        boot_mount=flavor.boot_mount,
        imager_custom=bool(seed and seed.imager_custom),
        userconf=bool(seed and seed.userconf),
        network_manager=bool(seed and seed.network_manager),
    )


def parse_os_release(data: bytes) -> dict[str, str]:
    facts = {}
    for line in data.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            try:
                words = shlex.split(value)
            except ValueError:
                words = [value]
            facts[key.strip()] = words[0] if words else ""
    return facts


def elf_arch(header: bytes, size: int | None = None) -> str | None:
    """'arm64', 'armhf', 'armel', another machine's name, or None when not a whole ELF
    executable header (a truncated file is not one). With the file's `size`, its program and
    section header tables must also lie inside it."""
    if not _elf_header_ok(header, size):
        return None
    little = header[5] == 1
    machine = struct.unpack_from("<H" if little else ">H", header, 18)[0]
    if machine == EM_AARCH64:
        return "arm64"
    if machine == EM_ARM:
        flags = struct.unpack_from("<I" if little else ">I", header, 36)[0]
        return "armhf" if flags & EF_ARM_ABI_FLOAT_HARD else "armel"
    names = {3: "i386", 62: "amd64", 243: "riscv64", 8: "mips"}
    return names.get(machine, f"machine {machine}")


def _elf_header_ok(header: bytes, size: int | None) -> bool:
    """The ELF identification and header fields (see elf(5)) are those of a real executable."""
    if len(header) < 52 or header[:4] != b"\x7fELF" or header[4] not in (1, 2):
        return False
    if header[5] not in (1, 2) or header[6] != 1:
        return False
    wide = header[4] == 2  # ELFCLASS64
    end = "<" if header[5] == 1 else ">"
    fields = end + ("HHIQQQIHHHHHH" if wide else "HHIIIIIHHHHHH")
    if len(header) < struct.calcsize(fields) + 16:
        return False
    values: tuple[int, ...] = struct.unpack_from(fields, header, 16)
    e_type, _machine, version, _entry, phoff, shoff, _flags, ehsize, phentsize, phnum = values[:10]
    shentsize, shnum = values[10:12]
    if e_type not in (2, 3) or version != 1 or ehsize != (64 if wide else 52) or phnum == 0:
        return False
    if phentsize != (56 if wide else 32) or phoff < ehsize:
        return False
    if size is None:
        return True
    tables_end = max(phoff + phnum * phentsize, shoff + shnum * shentsize if shoff else 0)
    return bool(tables_end <= size)


def _arch(image: Image) -> str:
    for probe in ("/usr/bin/env", "/bin/sh", "/usr/bin/dpkg"):
        data = image.root.read(probe)
        arch = elf_arch(data[:64]) if data else None
        if arch in ("arm64", "armhf"):
            return arch
        if arch is not None:
            raise UserError(
                f"{image.path}: the root filesystem's binaries are {arch}, not arm64 or armhf"
            )
    raise UserError(
        f"{image.path}: cannot tell the architecture: no ELF binary at /usr/bin/env or /bin/sh"
    )


def _boot_mount(image: Image, codename: str) -> str:
    fstab = (image.root.read(FSTAB) or b"").decode(errors="replace")
    for line in fstab.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not fields[0].startswith("#") and fields[2] == "vfat":
            return fields[1]
    for line in fstab.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1] in ("/boot/firmware", "/boot"):
            return fields[1]
    return "/boot" if codename in ("buster", "bullseye") else "/boot/firmware"
