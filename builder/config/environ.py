"""Secrets read from environment variables, taken out of the environment as they are read.

A variable named by the config (cluster.token_env, network.wifi.password_env) is removed from
this process's environment the first time it is read (os.environ.pop unsets it), so no child
tool (debugfs, mtools, qemu, xz...) inherits it; a later read in the same run is answered
from here.
"""

from __future__ import annotations

import os

_TAKEN: dict[str, str] = {}


def take(name: str) -> str:
    """The variable's value ('' when unset), removed from the environment children inherit."""
    if name in os.environ:
        _TAKEN[name] = os.environ.pop(name)
    return _TAKEN.get(name, "")
