"""cmdline.txt: enable the memory cgroup K3s needs, keep the line single and otherwise intact.

Also keeps a `ds=nocloud;i=<id>` override (Raspberry Pi Imager writes one) in
agreement with meta-data, and sets the Wi-Fi regulatory domain when there is a
country. The line and its rules are builder/seed/cmdline.py's. On an image whose
cmdline.txt Debian's raspi-firmware rewrites, the words that must last go into its
raspi-extra-cmdline too (builder/seed/raspi_firmware.py).
"""

from __future__ import annotations

from builder.disk.image import Image
from builder.layout import META_DATA
from builder.plan import Plan
from builder.seed import cmdline, raspi_firmware
from builder.util.errors import UserError


def apply(image: Image, plan: Plan) -> None:
    line = cmdline.read(image.boot)
    if line is None:
        raise UserError(f"{plan.base.origin}: the boot partition has no cmdline.txt")
    country = cmdline.wifi_country(plan.config.network.wifi, plan.config.hardware)
    meta = image.boot.read(META_DATA)  # staged by the seed step, which runs first
    cmdline.stage_for_k3s(image.boot, line, meta, country)
    if raspi_firmware.owns_cmdline(image.root):
        built = cmdline.read(image.boot) or line
        raspi_firmware.stage_extra(image.root, raspi_firmware.persistent_words(built))
