"""Pure step logic: cmdline editing and seed rendering."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from builder.config.fleet import load
from builder.seed.base import seed_input
from builder.seed.cloudinit import seed_files
from builder.seed.cmdline import CmdLine, meta_instance_id, wifi_country
from builder.steps.locale import enable, supported_entry
from builder.util.errors import UserError
from tests.conftest import fleet_yaml


def edit(raw: bytes, instance_id: str | None, country: str | None) -> bytes:
    """What the build's cmdline step makes of `raw`."""
    return CmdLine.parse(raw).for_k3s(instance_id, country).render()


def test_cmdline_flags_added_once_and_line_kept() -> None:
    raw = b"console=serial0,115200 root=PARTUUID=abcd-02 rootwait\n"
    once = edit(raw, None, None)
    assert (
        once
        == b"console=serial0,115200 root=PARTUUID=abcd-02 rootwait cgroup_memory=1 cgroup_enable=memory\n"
    )
    assert edit(once, None, None) == once


def test_cmdline_keeps_nocloud_override_in_agreement() -> None:
    raw = b"root=/dev/mmcblk0p2 ds=nocloud;i=imager-1234;s=file:///boot/firmware/ quiet"
    out = edit(raw, "pifleet-0123456789abcdef", "DE").decode()
    assert "ds=nocloud;s=file:///boot/firmware/;i=pifleet-0123456789abcdef" in out.split()
    assert "imager-1234" not in out
    assert out.split()[-1] == "cfg80211.ieee80211_regdom=DE"
    assert not out.endswith("\n"), "a line without newline stays without"
    untouched = b"root=/dev/sda2 ds=nocloud;s=file:///x/"
    assert b"ds=nocloud;s=file:///x/" in edit(untouched, "pifleet-1", None)


def test_cmdline_words_keep_their_order_and_spelling() -> None:
    """set replaces a word with the same key in place, else appends; drop leaves out what starts
    with a prefix; a file of several lines is one line's words, and the build refuses it."""
    line = CmdLine.parse(b"console=tty1  root=/dev/sda2 quiet\n")
    assert line == CmdLine(("console=tty1", "root=/dev/sda2", "quiet"), lines=1, newline=True)
    moved = line.set("root=PARTUUID=1-02").set("splash").set("quiet")
    assert moved.render() == b"console=tty1 root=PARTUUID=1-02 quiet splash\n"
    assert moved.set("root=PARTUUID=1-02") == moved, "setting a word twice changes nothing"
    assert moved.values("root") == ["PARTUUID=1-02"] and moved.values("roo") == []
    assert moved.drop("root=").render() == b"console=tty1 quiet splash\n"
    assert CmdLine.parse(b"").render() == b"\n" and CmdLine.parse(b"quiet").render() == b"quiet"
    two = CmdLine.parse(b"root=/dev/sda2\n\nquiet\n")
    assert (two.words, two.lines) == (("root=/dev/sda2", "quiet"), 2)
    with pytest.raises(UserError, match=r"cmdline\.txt has 2 lines; the firmware reads only one"):
        two.for_k3s(None, None)
    assert CmdLine.parse(b"ds=nocloud-net;i=a;s=x").nocloud == "ds=nocloud-net;i=a;s=x"
    assert CmdLine.parse(b"x=ds=nocloud").nocloud is None


def test_wifi_country_is_the_networks_else_the_hardwares(tmp_path: Path) -> None:
    """One rule, for the seed formats, the build's cmdline step and personalize."""
    wifi = "network: {wifi: {ssid: home, country: DE}}"
    (tmp_path / "f.yaml").write_text(fleet_yaml(network=wifi, extra="hardware: {wifi_country: FR}"))
    config = load(tmp_path / "f.yaml")
    assert wifi_country(config.network.wifi, config.hardware) == "DE"
    assert seed_input(config).country == "DE"
    (tmp_path / "f.yaml").write_text(fleet_yaml(extra="hardware: {wifi_country: FR}"))
    config = load(tmp_path / "f.yaml")
    assert wifi_country(None, config.hardware) == "FR" == seed_input(config).country
    (tmp_path / "f.yaml").write_text(fleet_yaml())
    config = load(tmp_path / "f.yaml")
    assert wifi_country(None, config.hardware) is None is seed_input(config).country


def test_instance_id_follows_the_seed(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text(
        fleet_yaml(devices="devices: [{hostname: pi-1}, {hostname: pi-2}]")
    )
    config = load(tmp_path / "f.yaml")
    golden = seed_files(config)
    again = seed_files(load(tmp_path / "f.yaml"))
    ids = {meta_instance_id(golden["/meta-data"])}
    assert golden == again, "same config, same bytes"
    for device in config.devices:
        files = seed_files(config, device)
        meta = yaml.safe_load(files["/meta-data"])
        assert meta["local-hostname"] == device.hostname
        assert yaml.safe_load(files["/user-data"])["hostname"] == device.hostname
        ids.add(meta["instance-id"])
    assert len(ids) == 3
    (tmp_path / "f.yaml").write_text(fleet_yaml(extra="timezone: Europe/Berlin"))
    changed = seed_files(load(tmp_path / "f.yaml"))
    assert meta_instance_id(changed["/meta-data"]) not in ids


PI_OS_LOCALE_GEN = "# This file lists locales that you wish to have built.\n\n# de_DE.UTF-8 UTF-8\nen_GB.UTF-8 UTF-8\n# en_US.UTF-8 UTF-8\n"
SUPPORTED = b"de_DE.UTF-8 UTF-8\nde_DE ISO-8859-1\nen_GB.UTF-8 UTF-8\nen_US.UTF-8 UTF-8\n"


def test_locale_is_uncommented_once_and_unknown_ones_are_named() -> None:
    entry = supported_entry(SUPPORTED, "de_DE.UTF-8")
    assert entry == "de_DE.UTF-8 UTF-8"
    once = enable(PI_OS_LOCALE_GEN, entry)
    assert once is not None
    assert "\nde_DE.UTF-8 UTF-8\nen_GB.UTF-8 UTF-8\n# en_US.UTF-8 UTF-8\n" in once
    assert enable(once, entry) is None  # already enabled: nothing to rewrite
    assert enable(PI_OS_LOCALE_GEN, "en_GB.UTF-8 UTF-8") is None
    assert enable("", "fr_FR.UTF-8 UTF-8") == "fr_FR.UTF-8 UTF-8\n"  # emptied locale.gen
    assert supported_entry(SUPPORTED, "de_DE") == "de_DE ISO-8859-1"
    assert supported_entry(SUPPORTED, "xx_YY.UTF-8") is None
    assert supported_entry(None, "xx_YY.UTF-8") == "xx_YY.UTF-8 UTF-8"
    assert supported_entry(None, "de_DE") is None
