"""`<name>.spdx.json`: an SPDX 2.3 JSON software bill of materials of the built image.

As pi-gen and rpi-image-gen ship one (they run syft), pifleet lists what the image contains:
every installed dpkg package, read rootlessly from /var/lib/dpkg/status with debugfs, with
the package URL syft would give it (`pkg:deb/<os id>/<name>@<version>?arch=..&distro=..`);
K3s with its version and sha256; the first-boot agent; and the base image with its origin
and sha256. The image is the described package; it CONTAINS the others and is a
DESCENDANT_OF the base. Everything derives from the inputs and SOURCE_DATE_EPOCH, so the same
build gives the same document.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import firstboot
from builder import __version__
from builder.detect import dpkg
from builder.detect.flavor import parse_os_release
from builder.disk.image import Image
from builder.layout import AGENT_DIR
from builder.plan import Plan
from builder.sources.obtain import Input

NOASSERTION = "NOASSERTION"


def document(plan: Plan, image_path: Path, image_sha256: str) -> bytes:
    image = Image.open(image_path)
    os_release = parse_os_release(image.root.read("/etc/os-release") or b"")
    packages = dpkg.installed(image.root.read(dpkg.STATUS) or b"")
    name = plan.config.name
    created = datetime.datetime.fromtimestamp(plan.epoch, datetime.UTC)
    entries = [
        _package(
            "SPDXRef-Image",
            f"{name}.img",
            None,
            NOASSERTION,
            image_sha256,
            purpose="OPERATING-SYSTEM",
            comment=f"Built by pifleet {__version__}",
        ),
        _input("SPDXRef-Base", plan.base, "base image", "OPERATING-SYSTEM"),
        *([_input("SPDXRef-K3s", plan.k3s, "k3s", "APPLICATION")] if plan.k3s else []),
        *(_input(f"SPDXRef-{i.role}", i, i.role, "APPLICATION") for i in plan.kubernetes),
        _package(
            "SPDXRef-Agent",
            "pifleet-firstboot",
            firstboot.__version__,
            NOASSERTION,
            None,
            purpose="APPLICATION",
            comment=f"{AGENT_DIR}/firstboot",
        ),
    ]
    if plan.airgap is not None:
        entries.append(
            _input("SPDXRef-K3s-airgap-images", plan.airgap, "k3s air-gap images", "ARCHIVE")
        )
    for index, package in enumerate(packages):
        entries.append(_deb(index, package, os_release))
    relationships = [_rel("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Image")]
    relationships.append(_rel("SPDXRef-Image", "DESCENDANT_OF", "SPDXRef-Base"))
    for entry in entries[2:]:
        relationships.append(_rel("SPDXRef-Image", "CONTAINS", entry["SPDXID"]))
    doc = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": f"https://pifleet.dev/spdx/{quote(name)}-{image_sha256}",
        "creationInfo": {
            "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "creators": [f"Tool: pifleet-{__version__}"],
        },
        "documentDescribes": ["SPDXRef-Image"],
        "packages": entries,
        "relationships": relationships,
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def _package(
    spdx_id: str,
    name: str,
    version: str | None,
    download: str,
    sha256: str | None,
    purpose: str | None = None,
    comment: str | None = None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "SPDXID": spdx_id,
        "name": name,
        "downloadLocation": download,
        "filesAnalyzed": False,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": NOASSERTION,
        "copyrightText": NOASSERTION,
    }
    if version:
        entry["versionInfo"] = version
    if sha256:
        entry["checksums"] = [{"algorithm": "SHA256", "checksumValue": sha256}]
    if purpose:
        entry["primaryPackagePurpose"] = purpose
    if comment:
        entry["comment"] = comment
    return entry


def _input(spdx_id: str, item: Input, what: str, purpose: str) -> dict[str, Any]:
    origin = item.origin
    download = origin if re.match(r"^https?://", origin) else NOASSERTION
    name = Path(origin).name if download == NOASSERTION else origin.rsplit("/", 1)[-1]
    return _package(
        spdx_id,
        name or what,
        item.version,
        download,
        item.sha256,
        purpose=purpose,
        comment=f"{what}: {origin}",
    )


def _deb(index: int, package: dpkg.Package, os_release: dict[str, str]) -> dict[str, Any]:
    safe = re.sub(r"[^A-Za-z0-9.-]", "-", package.name)
    entry = _package(
        f"SPDXRef-deb-{safe}-{index}",
        package.name,
        package.version,
        NOASSERTION,
        None,
        purpose="LIBRARY",
    )
    entry["sourceInfo"] = "acquired package info from the DPKG database: /var/lib/dpkg/status"
    purl = _purl(package, os_release)
    if purl:
        entry["externalRefs"] = [
            {
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl,
            }
        ]
    return entry


def _purl(package: dpkg.Package, os_release: dict[str, str]) -> str | None:
    """The package URL (purl-spec, type deb), as syft writes it for Debian-like systems."""
    distro = os_release.get("ID", "")
    if not distro or not package.version:
        return None
    qualifiers = [f"arch={quote(package.architecture)}"] if package.architecture else []
    if package.source and package.source != package.name:
        upstream = package.source + (f"@{package.source_version}" if package.source_version else "")
        qualifiers.append(f"upstream={quote(upstream)}")
    if os_release.get("VERSION_ID"):
        qualifiers.append(f"distro={quote(distro)}-{quote(os_release['VERSION_ID'])}")
    query = "&".join(qualifiers)
    return f"pkg:deb/{quote(distro)}/{quote(package.name)}@{quote(package.version)}" + (
        f"?{query}" if query else ""
    )


def _rel(a: str, kind: str, b: str) -> dict[str, str]:
    return {"spdxElementId": a, "relationshipType": kind, "relatedSpdxElement": b}
