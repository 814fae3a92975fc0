"""cmdline.txt, the kernel command line in the boot partition, and its one owner.

The Pi firmware reads the file's first line as the kernel command line: words separated by
spaces, in order. `CmdLine` is that line as a value: parsed once, edited by word (set, drop,
the NoCloud instance id, the Wi-Fi regulatory domain) and rendered back with every word pifleet
did not touch in its place and spelling. The build's seed and cmdline steps and personalize
stage it through here; lint and inspect read it through `CmdLine.parse`.

What the build writes: the memory cgroup K3s needs; a `ds=nocloud;i=<id>` override (Raspberry
Pi Imager writes one) in agreement with meta-data, since the command line beats it; the Wi-Fi
regulatory domain, when there is a country (`wifi_country`); and a seed format's own words
(systemd's `systemd.run=`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from builder.config.model import Hardware, Wifi
from builder.disk.fat import FatFilesystem
from builder.util.errors import UserError

CMDLINE = "/cmdline.txt"
CGROUP_FLAGS = ("cgroup_memory=1", "cgroup_enable=memory")
REGDOM = "cfg80211.ieee80211_regdom="
NOCLOUD = "ds=nocloud"


def wifi_country(wifi: Wifi | None, hardware: Hardware) -> str | None:
    """The Wi-Fi regulatory domain: the network's country, else hardware.wifi_country."""
    return wifi.country if wifi else hardware.wifi_country


def meta_instance_id(meta_data: bytes) -> str | None:
    """The instance-id a meta-data file carries, if any."""
    for line in meta_data.decode(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "instance-id":
            return value.strip().strip('"')
    return None


def _key(word: str) -> str:
    """A word's key: its text up to "=" ("quiet" for quiet, "root" for root=/dev/sda2)."""
    return word.split("=", 1)[0]


@dataclass(frozen=True)
class CmdLine:
    words: tuple[str, ...] = ()
    lines: int = 0  # the file's non-blank lines: the firmware reads only the first
    newline: bool = True  # the file ends in a newline (an empty file gets one)

    @classmethod
    def parse(cls, raw: bytes) -> CmdLine:
        text = raw.decode("utf-8", errors="replace")
        lines = sum(1 for ln in text.splitlines() if ln.strip())
        return cls(tuple(text.split()), lines, text.endswith("\n") or not text)

    def render(self) -> bytes:
        return (" ".join(self.words) + ("\n" if self.newline else "")).encode()

    def values(self, key: str) -> list[str]:
        """What follows `key=` in each word that has it ("root" -> ["PARTUUID=..."])."""
        return [w.removeprefix(key + "=") for w in self.words if w.startswith(key + "=")]

    @property
    def nocloud(self) -> str | None:
        """The `ds=nocloud...` word, if there is one."""
        return next((w for w in self.words if w.startswith(NOCLOUD)), None)

    def set(self, word: str) -> CmdLine:
        """`word` in place of the first word with the same key, else appended: setting a word
        twice changes nothing."""
        words = list(self.words)
        same = [i for i, w in enumerate(words) if _key(w) == _key(word)]
        if same:
            words[same[0]] = word
        else:
            words.append(word)
        return replace(self, words=tuple(words))

    def add(self, word: str) -> CmdLine:
        """`word` appended, unless the line has it already."""
        return self if word in self.words else replace(self, words=(*self.words, word))

    def drop(self, prefix: str) -> CmdLine:
        """Every word that starts with `prefix` ("cfg80211.ieee80211_regdom=") left out."""
        return replace(self, words=tuple(w for w in self.words if not w.startswith(prefix)))

    def with_instance_id(self, instance_id: str) -> CmdLine:
        """`ds=nocloud;i=old;s=...` -> same with i=<instance_id>: cmdline beats meta-data. A
        NoCloud word without an id keeps none."""
        return replace(self, words=tuple(_nocloud(w, instance_id) for w in self.words))

    def with_country(self, country: str | None) -> CmdLine:
        """The Wi-Fi regulatory domain `country` as the last word; None: the line unchanged."""
        return self if country is None else self.drop(REGDOM).add(REGDOM + country)

    def for_k3s(self, instance_id: str | None, country: str | None) -> CmdLine:
        """The build's line: one line, the memory cgroup flags, the NoCloud id `instance_id`
        (None: untouched) and the regulatory domain `country`."""
        if self.lines > 1:
            raise UserError(f"cmdline.txt has {self.lines} lines; the firmware reads only one")
        line = self
        for flag in CGROUP_FLAGS:
            line = line.add(flag)
        if instance_id is not None:
            line = line.with_instance_id(instance_id)
        return line.with_country(country)


def _nocloud(word: str, instance_id: str) -> str:
    if not word.startswith(NOCLOUD):
        return word
    head, *options = word.split(";")
    kept = [o for o in options if not (o.startswith("i=") or o.startswith("instance-id="))]
    if len(kept) == len(options):
        return word
    return ";".join([head, *kept, f"i={instance_id}"])


def read(boot: FatFilesystem) -> CmdLine | None:
    """The boot partition's cmdline.txt (staged changes included); None when it has none."""
    raw = boot.read(CMDLINE)
    return None if raw is None else CmdLine.parse(raw)


def stage(boot: FatFilesystem, line: CmdLine) -> None:
    """`line` as the boot partition's cmdline.txt, written with the partition's next flush."""
    boot.stage(CMDLINE, line.render())


def stage_for_k3s(
    boot: FatFilesystem, line: CmdLine, meta_data: bytes | None, country: str | None
) -> None:
    """`line` made the build's (`CmdLine.for_k3s`), its NoCloud id taken from `meta_data`."""
    instance = meta_instance_id(meta_data) if meta_data else None
    stage(boot, line.for_k3s(instance, country))
