"""cmdline.txt: enable the memory cgroup K3s needs, keep the line single and otherwise intact.

Also keeps a `ds=nocloud;i=<id>` override (Raspberry Pi Imager writes one) in
agreement with meta-data, and sets the Wi-Fi regulatory domain when Wi-Fi is
configured.
"""

from __future__ import annotations

from builder.disk.image import Image
from builder.plan import Plan
from builder.util.errors import UserError

CMDLINE = "/cmdline.txt"
CGROUP_FLAGS = ("cgroup_memory=1", "cgroup_enable=memory")
REGDOM = "cfg80211.ieee80211_regdom="


def apply(image: Image, plan: Plan) -> None:
    raw = image.boot.read(CMDLINE)
    if raw is None:
        raise UserError(f"{plan.base.origin}: the boot partition has no cmdline.txt")
    wifi = plan.config.network.wifi
    meta = image.boot.read("/meta-data")  # staged by the seed step, which runs first
    instance = meta_instance_id(meta) if meta else None
    updated = edit(raw, instance, wifi.country if wifi else plan.config.hardware.wifi_country)
    image.boot.stage(CMDLINE, updated)


def meta_instance_id(meta_data: bytes) -> str | None:
    """The instance-id a meta-data file carries, if any."""
    for line in meta_data.decode(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "instance-id":
            return value.strip().strip('"')
    return None


def edit(raw: bytes, instance_id: str | None, country: str | None) -> bytes:
    """The new cmdline.txt content; unchanged parameters keep their order and spelling."""
    text = raw.decode("utf-8", errors="replace")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1:
        raise UserError(f"cmdline.txt has {len(lines)} lines; the firmware reads only one")
    words = lines[0].split() if lines else []
    for flag in CGROUP_FLAGS:
        if flag not in words:
            words.append(flag)
    if instance_id is not None:
        words = [_nocloud(w, instance_id) for w in words]
    if country is not None:
        words = [w for w in words if not w.startswith(REGDOM)] + [REGDOM + country]
    ending = "\n" if text.endswith("\n") or not text else ""
    return (" ".join(words) + ending).encode()


def with_words(raw: bytes, add: tuple[str, ...]) -> bytes:
    """`raw` with each word of `add` in place of the word with the same key, else appended."""
    text = raw.decode("utf-8", errors="replace")
    words = text.split()
    for word in add:
        key = word.split("=", 1)[0] + "="
        same = [i for i, w in enumerate(words) if w.split("=", 1)[0] + "=" == key]
        if same:
            words[same[0]] = word
        else:
            words.append(word)
    ending = "\n" if text.endswith("\n") or not text else ""
    return (" ".join(words) + ending).encode()


def _nocloud(word: str, instance_id: str) -> str:
    """`ds=nocloud;i=old;s=...` -> same with i=<instance_id>: cmdline beats meta-data."""
    if not (word.startswith("ds=nocloud") or word.startswith("ds=nocloud-net")):
        return word
    head, *options = word.split(";")
    kept = [o for o in options if not (o.startswith("i=") or o.startswith("instance-id="))]
    if len(kept) == len(options):
        return word
    return ";".join([head, *kept, f"i={instance_id}"])
