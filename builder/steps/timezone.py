"""The fleet's `timezone` must exist in the image's tz database; unknown ones are named.

cloud-init's `timezone:` links /etc/localtime to /usr/share/zoneinfo/<name> and
fails on a name the image does not have, on every device, at first boot. The
list of names is read once from the image (tzdata.zi, else zone1970.tab/zone.tab);
without either, the zone's own file must exist as a regular file under
/usr/share/zoneinfo. The config already refused anything that is not a tz name's
shape (no leading '/', no '.' or '..'), so the name cannot leave that folder.
"""

from __future__ import annotations

import difflib

from builder.disk.image import Image
from builder.plan import Plan
from builder.util.errors import UserError

ZONEINFO = "/usr/share/zoneinfo"
BUILT_IN = ("UTC", "Etc/UTC")


def check(image: Image, plan: Plan) -> None:
    """Refuse a zone the image lacks (read only: build.examine_base runs it on the base)."""
    zone = plan.config.timezone
    if zone in BUILT_IN:
        return
    names = zone_names(image)
    if names is None:
        if _zone_file(image, zone):
            return
        raise UserError(
            f"{plan.config.where('timezone')}: {zone!r} is not a time zone of the image "
            f"(no {ZONEINFO}/{zone} in it)"
        )
    if zone in names:
        return
    near = difflib.get_close_matches(zone, sorted(names), n=3, cutoff=0.5)
    hint = f"; nearest: {', '.join(near)}" if near else ""
    raise UserError(
        f"{plan.config.where('timezone')}: {zone!r} is not a time zone of the image "
        f"(see {ZONEINFO}){hint}"
    )


def zone_names(image: Image) -> set[str] | None:
    """Every zone and link name of the image's tz database, or None when it has none."""
    data = image.root.read(f"{ZONEINFO}/tzdata.zi")
    if data is not None:
        names = set()
        for line in data.decode("utf-8", errors="replace").splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "Z":
                names.add(words[1])
            elif len(words) >= 3 and words[0] == "L":
                names.add(words[2])
        return names
    for table in ("zone1970.tab", "zone.tab"):
        data = image.root.read(f"{ZONEINFO}/{table}")
        if data is not None:
            rows = [ln.split("\t") for ln in data.decode("utf-8", errors="replace").splitlines()]
            return {row[2] for row in rows if len(row) >= 3 and not row[0].startswith("#")}
    return None


def _zone_file(image: Image, zone: str) -> bool:
    """True when the image has /usr/share/zoneinfo/<zone> as a regular file (links followed)."""
    inode = image.root.stat(image.root.resolve(f"{ZONEINFO}/{zone}"))
    return inode is not None and inode.kind == "regular"
