"""Picks the seed format for an image and renders it: the one entry point to builder/seed/."""

from __future__ import annotations

from collections.abc import Callable

from builder.config.model import Device, FleetConfig
from builder.disk.flavor import Flavor
from builder.layout import FIRSTRUN, PRESEED
from builder.seed import cloudinit, preseed, systemd
from builder.seed.base import HostKey, Seed, SeedInput, Target, seed_input

Renderer = Callable[[SeedInput, Target], Seed]

RENDERERS: dict[str, Renderer] = {
    "cloudinit": cloudinit.render,
    "cloudinit-rpi": cloudinit.render,
    "systemd": systemd.render,
    "rpi-preseed": preseed.render,
}
# Every file any format writes at the boot partition's root, for `inspect` and `lint`.
SEED_FILES = (*cloudinit.SEED_FILES, FIRSTRUN, PRESEED)


def target(flavor: Flavor) -> Target:
    seed = flavor.seed
    return Target(
        format=flavor.init_format,
        boot_mount=flavor.boot_mount,
        imager_custom=bool(seed and seed.imager_custom),
        userconf=bool(seed and seed.userconf),
        network_manager=bool(seed and seed.network_manager),
    )


def render(
    config: FleetConfig,
    flavor: Flavor,
    device: Device | None = None,
    host_key: HostKey | None = None,
) -> Seed:
    """The seed for the fleet's golden image (no device) or for one device."""
    where = target(flavor)
    return RENDERERS[where.format](seed_input(config, device, host_key), where)
