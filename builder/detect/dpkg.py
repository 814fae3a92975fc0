"""The dpkg database of an image (/var/lib/dpkg/status), read without mounting or chroot.

Used to tell which first-boot machinery an image carries (cloud-init,
raspberrypi-sys-mods, rpi-preseed) and to list its packages in the SBOM.
"""

from __future__ import annotations

from dataclasses import dataclass

STATUS = "/var/lib/dpkg/status"


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    architecture: str
    source: str | None  # "Source:" without its version, None when the same as name
    source_version: str | None  # the version in "Source: name (version)", if any


def installed(status: bytes) -> list[Package]:
    """Packages whose Status is `install ok installed`, in file order."""
    packages = []
    for stanza in status.decode("utf-8", errors="replace").split("\n\n"):
        fields = _fields(stanza)
        if fields.get("Status", "").split()[-1:] != ["installed"] or "Package" not in fields:
            continue
        source, _, source_version = fields.get("Source", "").partition(" (")
        packages.append(
            Package(
                name=fields["Package"],
                version=fields.get("Version", ""),
                architecture=fields.get("Architecture", ""),
                source=source or None,
                source_version=source_version.rstrip(")") or None,
            )
        )
    return packages


def _fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if not line or line[0] in " \t":
            continue  # continuation lines (descriptions, conffiles) are not needed here
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def version_of(status: bytes, name: str) -> str | None:
    """The installed version of package `name`, None when it is not installed."""
    return next((p.version for p in installed(status) if p.name == name), None)


def upstream(version: str) -> str:
    """The upstream part of a Debian version: '25.2-1+rpt1' -> '25.2', '1:2.3-4' -> '2.3'."""
    without_epoch = version.split(":", 1)[-1]
    return without_epoch.rsplit("-", 1)[0] if "-" in without_epoch else without_epoch
