"""Files pifleet ships inside its packages, found through importlib.resources.

builder/data/ holds the fleet schema, the image catalog, the example fleet and the K3s
stand-in. In a checkout those are symlinks to config/, images/ and tests/fixtures/, where
users and editors find them; the sdist and the wheel store the files' contents, so an
installed pifleet reads its own copies and never looks for a checkout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from builder.util.errors import BuildError


def package_dir(package: str) -> Path:
    """The directory an installed package (builder, firstboot) was imported from."""
    root = resources.files(package)
    if not isinstance(root, Path):
        raise BuildError(
            f"{root}: pifleet's package {package} is not a directory; install it with pip or pipx"
        )
    return root


def data(*parts: str) -> Path:
    """builder/data/<parts>: schema.json, images/, example.yaml, k3s-standin."""
    return package_dir("builder").joinpath("data", *parts)
