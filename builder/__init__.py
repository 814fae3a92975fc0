"""pifleet builder: turns a stock Raspberry Pi image into a K3s fleet image, rootless."""

from __future__ import annotations


def version() -> str:
    """pifleet's version; pyproject.toml is its one source. firstboot reads it, from the
    installed distribution's metadata, on first use, not at import, so `pifleet --help` does not
    pay for the metadata scan (the agent's copy in an image has it written in)."""
    import firstboot

    return firstboot.__version__


def __getattr__(name: str) -> str:
    """`builder.__version__`, the same as version() and as lazy: what
    `from builder import __version__` gives."""
    if name == "__version__":
        return version()
    raise AttributeError(f"module 'builder' has no attribute {name!r}")
