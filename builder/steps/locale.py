"""/etc/locale.gen: make the fleet's locale one the device can generate at first boot.

cloud-init's `locale:` runs Debian's `locale-gen`, which ignores its argument
and builds only the locales uncommented in /etc/locale.gen, then
`update-locale`, which fails for a locale that was not built. Raspberry Pi OS
ships one locale (en_GB.UTF-8) uncommented, so any other locale would be a
cloud-init error on every device unless it is enabled here, once, fleet-wide.
Images without /etc/locale.gen (Ubuntu: its locale-gen takes the name) are left alone, but
the name is still checked against the image's SUPPORTED list, which names the nearest ones.
"""

from __future__ import annotations

import difflib

from builder.disk.entries import File
from builder.disk.image import Image
from builder.layout import LOCALE_GEN
from builder.plan import Plan
from builder.util.errors import UserError

SUPPORTED = "/usr/share/i18n/SUPPORTED"
BUILT_IN = ("c", "c.utf-8", "posix")  # need no generation


def check(image: Image, plan: Plan) -> str | None:
    """The locale's entry in the image's SUPPORTED list, None when there is nothing to enable;
    a locale the image does not support is refused. Read only: build.examine_base runs it on
    the base, before the copy."""
    locale = plan.config.locale
    if locale.lower() in BUILT_IN:
        return None
    current, supported = image.root.read(LOCALE_GEN), image.root.read(SUPPORTED)
    if current is None and supported is None:
        return None  # nothing to check against, nothing to enable
    entry = supported_entry(supported, locale)
    if entry is None:
        raise UserError(
            f"{plan.config.where('locale')}: {locale!r} is not a locale the image supports "
            f"(see {SUPPORTED} in the image){nearest(supported, locale)}"
        )
    return entry


def apply(image: Image, plan: Plan) -> None:
    """Enable the locale in /etc/locale.gen."""
    entry = check(image, plan)
    current = image.root.read(LOCALE_GEN)
    if entry is None or current is None:
        return
    updated = enable(current.decode("utf-8", errors="replace"), entry)
    if updated is not None:
        image.root.stage(File(LOCALE_GEN, 0o644, data=updated.encode()))


def nearest(supported: bytes | None, locale: str) -> str:
    """'; nearest: a, b' from the image's SUPPORTED list (or an example without one)."""
    if supported is None:
        return ", e.g. en_US.UTF-8"
    names = [ln.split()[0] for ln in supported.decode(errors="replace").splitlines() if ln.split()]
    near = difflib.get_close_matches(locale, names, n=3, cutoff=0.5)
    return f"; nearest: {', '.join(near)}" if near else ", e.g. en_US.UTF-8"


def supported_entry(supported: bytes | None, locale: str) -> str | None:
    """The `<locale> <charset>` line for `locale`; without a SUPPORTED list, UTF-8 is assumed
    for a `.UTF-8` name."""
    if supported is None:
        return f"{locale} UTF-8" if locale.upper().endswith(".UTF-8") else None
    for line in supported.decode("utf-8", errors="replace").splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == locale:
            return f"{words[0]} {words[1]}"
    return None


def enable(text: str, entry: str) -> str | None:
    """`text` with `entry` uncommented (or appended); None when it is already enabled."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.split() == entry.split():
            return None
        if line.lstrip("#").split() == entry.split():
            lines[i] = entry
            return "\n".join(lines) + "\n"
    return "\n".join([*lines, entry]) + "\n"
