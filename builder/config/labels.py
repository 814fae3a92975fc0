"""The node labels pifleet adds to every device, so `pifleet status` can find a fleet's nodes.

Under one prefix: the fleet's name, the build's short id (it changes when the fleet
file or pifleet changes, so nodes running an older image stand out) and the
agent's version.
"""

from __future__ import annotations

import hashlib

import firstboot
from builder import __version__
from builder.config.model import FleetConfig

PREFIX = "pifleet"
FLEET = f"{PREFIX}/fleet"
IMAGE = f"{PREFIX}/image"
AGENT = f"{PREFIX}/agent"


def image_id(config: FleetConfig) -> str:
    """A short id of what a build of `config` puts in the image (fleet file + pifleet)."""
    return hashlib.sha256(f"{config.config_hash}:{__version__}".encode()).hexdigest()[:12]


def fleet_labels(config: FleetConfig) -> tuple[str, ...]:
    """`key=value` labels, valid Kubernetes label values (the version's `+` is replaced)."""
    agent = firstboot.__version__.replace("+", "_")
    return (f"{FLEET}={config.name}", f"{IMAGE}={image_id(config)}", f"{AGENT}={agent}")
