"""pifleet first-boot agent: joins this device to the fleet's K3s server, once.

Runs on the device's own python3 (3.9 to 3.13), standard library only.

`firstboot.__version__` is pyproject.toml's version, its one source. A device has no pip
metadata, so the build appends to the image's copy of this file a line that sets it
(builder/steps/agent.py; `pifleet inspect` reads it back); on the host, where that line is
not, it is the installed distribution's, read on first use (`pifleet --help` skips the scan).
"""

from __future__ import annotations


def __getattr__(name: str) -> str:
    if name != "__version__":
        raise AttributeError("module 'firstboot' has no attribute " + repr(name))
    from importlib import metadata

    try:
        found = metadata.version("pifleet")
    except metadata.PackageNotFoundError:
        found = "0+unknown"  # run from a checkout that was never installed
    globals()["__version__"] = found  # read once
    return found
