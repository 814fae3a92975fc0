"""Whether a binary the build installs can run on the image: an ELF for its architecture, or a
test stand-in script where the config allows one (K3s, kubeadm, kubelet, kubectl)."""

from __future__ import annotations

from builder.detect.flavor import elf_arch
from builder.util.errors import UserError

MACHINES = {
    "arm64": "AArch64",
    "armhf": "ARM",
    "armel": "ARM soft-float",
    "amd64": "x86-64",
    "i386": "x86",
}


def check_binary(
    header: bytes, name: str, where: str, image_arch: str, standin: bool, key: str
) -> None:
    """An ELF for `image_arch`, or with `standin` a `#!` script; else one line saying why.
    `key`: the setting that allows a stand-in (k3s.test_standin, kubernetes.test_standin)."""
    arch = elf_arch(header)
    if arch is None:
        if not standin:
            raise UserError(
                f"{where}: not an ELF executable, so not a {name} binary "
                f"(a test stand-in needs {key}: true)"
            )
        if not header.startswith(b"#!"):
            raise UserError(f"{where}: the {name} test stand-in must be an executable script (#!)")
        return
    if arch != image_arch:
        machine = MACHINES.get(arch, arch)
        raise UserError(
            f"{where}: the {name} binary is {arch} ({machine}) but the image is {image_arch}"
        )
