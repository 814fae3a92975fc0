"""The seed formats, one `SeedFormat` record per module of builder/seed/, and the one entry
point that renders a seed. OS detection (builder/detect/osformat.py, flavor.py) and `inspect`
read what a format needs and writes from these records."""

from __future__ import annotations

from builder.config.model import Device, FleetConfig
from builder.seed import cloudinit, preseed, systemd
from builder.seed.base import HostKey, ImageTraits, Renderer, Seed, SeedFormat, seed_input

# In the order `inspect` tells a written seed apart: firstrun.sh with its command-line word
# first (it runs whatever else the partition holds), user-data (which Pi OS ships as a
# template) last.
FORMATS: tuple[SeedFormat, ...] = (systemd.FORMAT, preseed.FORMAT, cloudinit.FORMAT)
BY_NAME: dict[str, SeedFormat] = {name: f for f in FORMATS for name in f.names}
RENDERERS: dict[str, Renderer] = {name: f.render for name, f in BY_NAME.items()}
# Every file any format writes at the boot partition's root, for `inspect` and `lint`.
SEED_FILES = (*cloudinit.FORMAT.files, *systemd.FORMAT.files, *preseed.FORMAT.files)


def render(
    config: FleetConfig,
    traits: ImageTraits,
    device: Device | None = None,
    host_key: HostKey | None = None,
) -> Seed:
    """The seed for the fleet's golden image (no device) or for one device."""
    return RENDERERS[traits.format](seed_input(config, device, host_key), traits)
