"""/etc/locale.gen: make the fleet's locale one the device can generate at first boot.

cloud-init's `locale:` runs Debian's `locale-gen`, which ignores its argument
and builds only the locales uncommented in /etc/locale.gen, then
`update-locale`, which fails for a locale that was not built. Raspberry Pi OS
ships one locale (en_GB.UTF-8) uncommented, so any other locale would be a
cloud-init error on every device unless it is enabled here, once, fleet-wide.
Images without /etc/locale.gen (Ubuntu: its locale-gen takes the name) are left alone.
"""

from __future__ import annotations

from builder.disk.entries import File
from builder.disk.image import Image
from builder.plan import Plan
from builder.util.errors import UserError

LOCALE_GEN = "/etc/locale.gen"
SUPPORTED = "/usr/share/i18n/SUPPORTED"
BUILT_IN = ("c", "c.utf-8", "posix")  # need no generation


def apply(image: Image, plan: Plan) -> None:
    locale = plan.config.locale
    current = image.root.read(LOCALE_GEN)
    if locale.lower() in BUILT_IN or current is None:
        return
    entry = supported_entry(image.root.read(SUPPORTED), locale)
    if entry is None:
        raise UserError(
            f"{plan.config.where('locale')}: {locale!r} is not a locale the image supports "
            f"(see {SUPPORTED} in the image), e.g. en_US.UTF-8"
        )
    updated = enable(current.decode("utf-8", errors="replace"), entry)
    if updated is not None:
        image.root.stage(File(LOCALE_GEN, 0o644, data=updated.encode()))


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
