"""The node labels pifleet gives every device, so `pifleet status` can find a fleet's nodes.

Under one prefix: the fleet's name and the agent's version, fleet-wide in the golden
image; and the golden image's own digest (short), which exists only once the image is
built, so personalization writes it into each device's seed (device.json).
"""

from __future__ import annotations

import firstboot
from builder.config.model import FleetConfig

PREFIX = "pifleet"
FLEET = f"{PREFIX}/fleet"
IMAGE = f"{PREFIX}/image"
AGENT = f"{PREFIX}/agent"
SHORT = 12  # hex digits of the golden image's sha256 in the image label


def fleet_labels(config: FleetConfig) -> tuple[str, ...]:
    """`key=value` labels for every node of the fleet (valid Kubernetes label values)."""
    agent = firstboot.__version__.replace("+", "_")
    return (f"{FLEET}={config.name}", f"{AGENT}={agent}")


def image_label(golden_sha256: str) -> str:
    return f"{IMAGE}={golden_sha256[:SHORT]}"
