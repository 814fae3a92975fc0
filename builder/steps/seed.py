"""Writes the first-boot seed in the format the image understands (builder/seed/formats.py):
its files into the boot partition and its words onto the kernel command line."""

from __future__ import annotations

from builder.detect.flavor import seed_traits
from builder.disk.image import Image
from builder.plan import Plan
from builder.seed import cmdline, formats


def apply(image: Image, plan: Plan) -> None:
    seed = formats.render(plan.config, seed_traits(plan.flavor))
    for path, data in seed.files.items():
        image.boot.stage(path, data)
    line = cmdline.read(image.boot) if seed.cmdline else None
    if line is not None:
        for word in seed.cmdline:
            line = line.set(word)
        cmdline.stage(image.boot, line)
