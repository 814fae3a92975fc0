"""Installs the K3s binary like the official installer: /usr/local/bin/k3s (0755 root)
plus kubectl, crictl and ctr symlinks, k3s-killall.sh and the role's uninstall script
(k3s-agent-uninstall.sh or k3s-uninstall.sh, 0755), and optional air-gap images.

The binary must be an ELF for the image's architecture; a test stand-in (a
script) is accepted only when the config says `k3s.test_standin: true`.
"""

from __future__ import annotations

from builder import __version__
from builder.disk.entries import Directory, File, Symlink
from builder.disk.image import Image
from builder.layout import AIRGAP_DIR, BIN_DIR, K3S_PATH
from builder.plan import Plan
from builder.steps.elfcheck import check_binary as check_elf
from builder.util.errors import UserError
from builder.util.render import render

TOOLS = ("kubectl", "crictl", "ctr")


def apply(image: Image, plan: Plan) -> None:
    if plan.k3s is None:
        raise UserError(f"{plan.config.where('k3s')}: no K3s binary for a K3s fleet")
    check_binary(plan)
    image.root.stage(File(K3S_PATH, 0o755, source=plan.k3s.path))
    for tool in TOOLS:
        image.root.stage(Symlink(f"{BIN_DIR}/{tool}", "k3s"))
    killall = render("k3s-killall.sh", version=__version__)
    image.root.stage(File(f"{BIN_DIR}/k3s-killall.sh", 0o755, data=killall))
    name, unit = uninstall_script(plan.config.cluster.role)
    script = render("k3s-uninstall.sh", version=__version__, script=name, unit=unit)
    image.root.stage(File(f"{BIN_DIR}/{name}", 0o755, data=script))
    if plan.airgap is not None:
        image.root.stage(Directory(AIRGAP_DIR, 0o755))
        name = f"k3s-airgap-images-{plan.config.arch}.tar.zst"
        if not plan.airgap.path.name.endswith(".tar.zst"):
            name = plan.airgap.path.name
        image.root.stage(File(f"{AIRGAP_DIR}/{name}", 0o644, source=plan.airgap.path))


def uninstall_script(role: str) -> tuple[str, str]:
    """(script name, unit) as install.sh names them for `role`."""
    if role == "agent":
        return "k3s-agent-uninstall.sh", "k3s-agent.service"
    return "k3s-uninstall.sh", "k3s.service"


def check_binary(plan: Plan) -> None:
    """Refuse a binary that cannot run on the image; the message names both architectures."""
    assert plan.k3s is not None  # apply checked it
    with open(plan.k3s.path, "rb") as f:
        header = f.read(64)
    check_elf(
        header, "k3s", plan.k3s.origin, plan.flavor.arch, plan.k3s_standin, "k3s.test_standin"
    )
