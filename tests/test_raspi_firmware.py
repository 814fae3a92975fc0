"""Debian's raspi-firmware rewrites cmdline.txt (builder/seed/raspi_firmware.py): on an image
that has it, the build's lasting words also go to /etc/default/raspi-extra-cmdline, where its
kernel hook takes them from; an image without it gets no such file."""

from __future__ import annotations

from pathlib import Path

from builder.disk.image import Image
from builder.seed.cmdline import CmdLine
from builder.seed.raspi_firmware import persistent_words
from tests.builds import build_ok
from tests.image_read import fat_read
from tests.pi_layout import _debugfs, _ls

EXTRA = "/etc/default/raspi-extra-cmdline"


def with_raspi_firmware(image: Path, tmp: Path, extra: str | None) -> None:
    """`image` with Debian raspi-firmware's settings (and raspi-extra-cmdline, if given)."""
    (tmp / "settings").write_text('ROOTPART="LABEL=RASPIROOT"\n')
    mkdir = [] if "default" in _ls(image, "/etc") else ["mkdir /etc/default"]
    commands = [*mkdir, f"write {tmp / 'settings'} /etc/default/raspi-firmware"]
    if extra is not None:
        (tmp / "extra").write_text(extra)
        commands.append(f"write {tmp / 'extra'} {EXTRA}")
    _debugfs(image, commands)


def test_the_lasting_words_go_where_raspi_firmware_keeps_them(fleet_dir: Path) -> None:
    with_raspi_firmware(fleet_dir / "base.img", fleet_dir, None)
    build_ok(fleet_dir)
    image = fleet_dir / "out" / "edge-fleet.img"
    extra = Image.open(image).root.read(EXTRA) or b""
    assert extra.endswith(b"\n") and extra.count(b"\n") == 1
    assert sorted(extra.split()) == [
        b"cfg80211.ieee80211_regdom=GB", b"cgroup_enable=memory", b"cgroup_memory=1",
    ]  # fmt: skip
    assert "cgroup_enable=memory" in fat_read(image, "/cmdline.txt").decode()


def test_its_own_words_are_kept_and_a_country_replaced(fleet_dir: Path) -> None:
    with_raspi_firmware(
        fleet_dir / "base.img", fleet_dir, "rootfstype=ext4 cfg80211.ieee80211_regdom=US\n"
    )
    build_ok(fleet_dir)
    extra = (Image.open(fleet_dir / "out" / "edge-fleet.img").root.read(EXTRA) or b"").split()
    assert extra[0] == b"rootfstype=ext4", "its own word is not kept first"
    assert sorted(extra[1:]) == [
        b"cfg80211.ieee80211_regdom=GB", b"cgroup_enable=memory", b"cgroup_memory=1",
    ]  # fmt: skip


def test_an_image_without_raspi_firmware_gets_no_such_file(fleet_dir: Path) -> None:
    build_ok(fleet_dir)
    assert Image.open(fleet_dir / "out" / "edge-fleet.img").root.read(EXTRA) is None


def test_first_boot_words_stay_in_cmdline_txt_only() -> None:
    line = CmdLine.parse(
        b"console=serial0 root=x ds=nocloud;i=new systemd.run=/boot/firstrun.sh "
        b"cgroup_memory=1 cgroup_enable=memory cfg80211.ieee80211_regdom=DE\n"
    )
    assert persistent_words(line) == (
        "cgroup_memory=1", "cgroup_enable=memory", "cfg80211.ieee80211_regdom=DE",
    )  # fmt: skip
