"""Debian's raspi-firmware owns cmdline.txt on Debian's images for the Raspberry Pi: pifleet's
words go where it keeps them too.

| rule | source |
|---|---|
| the `z50-raspi-firmware` kernel hook writes `/boot/firmware/cmdline.txt` from scratch (console, `root=$ROOTPART`, `rw fsck.repair=yes net.ifnames=0 cma=... rootwait`, then the words of `/etc/default/raspi-extra-cmdline`) each time a kernel is installed | raspi-firmware `debian/kernel/postinst.d/z50-raspi-firmware` (the `cmdline_custom` file) |
| Debian's raspi images run it again at first boot: `rpi-reconfigure-raspi-firmware.service` runs `dpkg-reconfigure raspi-firmware`, then disables itself | Debian image-specs `rootfs/etc/systemd/system/rpi-reconfigure-raspi-firmware.service` |
| the package's settings are `/etc/default/raspi-firmware` (ROOTPART, CONSOLES, KERNEL_ARCH, CMA) | raspi-firmware `debian/default/raspi-firmware` |

So on such an image a word pifleet puts only in cmdline.txt (the memory cgroup K3s needs, the
Wi-Fi regulatory domain) is gone from the second boot on. The build also adds those words to
`/etc/default/raspi-extra-cmdline`, keeping the words it already has, so the hook writes them
back. The NoCloud instance id and a seed's one-shot words (`systemd.run=`) stay in cmdline.txt
only: they are for the first boot.
"""

from __future__ import annotations

from builder.disk.entries import File
from builder.disk.ext4 import Ext4Filesystem
from builder.seed.cmdline import CGROUP_FLAGS, REGDOM, CmdLine

SETTINGS = "/etc/default/raspi-firmware"
EXTRA = "/etc/default/raspi-extra-cmdline"


def owns_cmdline(root: Ext4Filesystem) -> bool:
    """Whether Debian's raspi-firmware, which rewrites cmdline.txt, is installed."""
    return root.stat(SETTINGS) is not None


def persistent_words(line: CmdLine) -> tuple[str, ...]:
    """The words of the build's line that must outlive the first boot: the memory cgroup and
    the regulatory domain, whether the build added them or the line had them already."""
    return tuple(w for w in line.words if w in CGROUP_FLAGS or w.startswith(REGDOM))


def stage_extra(root: Ext4Filesystem, words: tuple[str, ...]) -> None:
    """`words` in raspi-extra-cmdline, after the words it has (a regulatory domain replaced)."""
    raw = root.read(EXTRA)
    kept = (raw or b"").decode("utf-8", errors="replace").split()
    if any(w.startswith(REGDOM) for w in words):
        kept = [w for w in kept if not w.startswith(REGDOM)]
    line = kept + [w for w in words if w not in kept]
    if line != kept or raw is None:
        root.stage(File(EXTRA, 0o644, data=(" ".join(line) + "\n").encode()))
