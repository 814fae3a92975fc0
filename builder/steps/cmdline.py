"""cmdline.txt: enable the memory cgroup K3s needs, keep the line single and otherwise intact.

Also keeps a `ds=nocloud;i=<id>` override (Raspberry Pi Imager writes one) in
agreement with meta-data, and sets the Wi-Fi regulatory domain when there is a
country. The line and its rules are builder/seed/cmdline.py's.
"""

from __future__ import annotations

from builder.disk.image import Image
from builder.layout import META_DATA
from builder.plan import Plan
from builder.seed import cmdline
from builder.util.errors import UserError


def apply(image: Image, plan: Plan) -> None:
    line = cmdline.read(image.boot)
    if line is None:
        raise UserError(f"{plan.base.origin}: the boot partition has no cmdline.txt")
    country = cmdline.wifi_country(plan.config.network.wifi, plan.config.hardware)
    meta = image.boot.read(META_DATA)  # staged by the seed step, which runs first
    cmdline.stage_for_k3s(image.boot, line, meta, country)
