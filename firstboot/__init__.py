"""pifleet first-boot agent: joins this device to the fleet's K3s server, once.

Runs on the device's own python3 (3.9 to 3.13), standard library only.
"""

__version__ = "0.1.0"
