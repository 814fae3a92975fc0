"""pifleet builder: turns a stock Raspberry Pi image into a K3s fleet image, rootless."""

__version__ = "0.1.0"
