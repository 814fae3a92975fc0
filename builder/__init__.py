"""pifleet builder: turns a stock Raspberry Pi image into a K3s fleet image, rootless."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def version() -> str:
    """The installed distribution's version; pyproject.toml is its one source.

    Read on first use, not at import, so `pifleet --help` does not pay for the metadata scan.
    """
    from importlib import metadata

    try:
        return metadata.version("pifleet")
    except metadata.PackageNotFoundError:
        return "0+unknown"  # run from a checkout that was never installed


def __getattr__(name: str) -> str:
    """`builder.__version__`, also lazy, for code that still imports the old constant."""
    if name == "__version__":
        return version()
    raise AttributeError(f"module 'builder' has no attribute {name!r}")
