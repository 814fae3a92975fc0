"""Writes the first-boot seed in the format the image understands (builder/seed/formats.py):
its files into the boot partition and its words onto the kernel command line."""

from __future__ import annotations

from builder.disk.image import Image
from builder.plan import Plan
from builder.seed import formats
from builder.steps import cmdline


def apply(image: Image, plan: Plan) -> None:
    seed = formats.render(plan.config, plan.target)
    for path, data in seed.files.items():
        image.boot.stage(path, data)
    if seed.cmdline:
        raw = image.boot.read(cmdline.CMDLINE)
        if raw is not None:
            image.boot.stage(cmdline.CMDLINE, cmdline.with_words(raw, seed.cmdline))
