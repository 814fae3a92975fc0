"""config.txt edits: in place, in the right section, never twice."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from builder.config.model import ConfigTxtLine
from builder.steps.config_txt import edit, identity
from tests.conftest import TEST_TOKEN, fleet_yaml, pifleet
from tests.image_read import fat_read, sha256

# The shape of Raspberry Pi OS Trixie's config.txt (pi-gen stage1/00-boot-files/files/config.txt)
PI_OS = """# For more options and information see
# http://rptl.io/configtxt
# Uncomment some or all of these to enable the optional hardware interfaces
#dtparam=i2c_arm=on
#dtparam=i2s=on
#dtparam=spi=on

# Enable audio (loads snd_bcm2835)
dtparam=audio=on

# Automatically load overlays for detected cameras
camera_auto_detect=1

[cm4]
# Enable host mode on the 2711 built-in XHCI USB controller.
otg_mode=1

[cm5]
dtoverlay=dwc2,dr_mode=host

[all]
"""


def test_identity() -> None:
    assert identity("dtparam=i2c_arm=on") == identity("dtparam=i2c_arm=off") == "dtparam=i2c_arm"
    assert identity("dtoverlay=disable-bt") != identity("dtoverlay=disable-wifi")
    assert identity("enable_uart=1") == "enable_uart"


def test_edits_land_in_place_and_twice_changes_nothing() -> None:
    edits = [
        ConfigTxtLine("all", "dtparam=audio=off"),
        ConfigTxtLine("all", "dtparam=i2c_arm=on"),
        ConfigTxtLine("all", "enable_uart=1"),
        ConfigTxtLine("all", "dtoverlay=disable-bt"),
        ConfigTxtLine("pi5", "kernel=kernel8.img"),
        ConfigTxtLine("cm4", "otg_mode=0"),
    ]
    once = edit(PI_OS, edits)
    assert edit(once, edits) == once
    lines = once.splitlines()
    assert lines.count("dtparam=audio=off") == 1 and "dtparam=audio=on" not in lines
    assert "otg_mode=0" in lines and "otg_mode=1" not in lines
    # the last [all] section gets the new lines; a new [pi5] section follows it
    tail = lines[lines.index("[all]") :]
    assert tail == [
        "[all]",
        "enable_uart=1",
        "dtoverlay=disable-bt",
        "",
        "[pi5]",
        "kernel=kernel8.img",
    ]
    # the commented-out line before the first filter (which applies to all) is uncommented
    assert lines[3] == "dtparam=i2c_arm=on" and lines.count("dtparam=i2c_arm=on") == 1


def test_commented_line_is_uncommented_when_it_is_the_section() -> None:
    text = "#dtparam=spi=on\ndtparam=audio=on\n"
    assert edit(text, [ConfigTxtLine("all", "dtparam=spi=on")]) == (
        "dtparam=spi=on\ndtparam=audio=on\n"
    )
    assert edit("", [ConfigTxtLine("pi4", "arm_boost=1")]) == "[pi4]\narm_boost=1\n"


def test_build_writes_config_txt_once(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    make_image("base.img")
    (tmp_path / "token").write_text(TEST_TOKEN)
    (tmp_path / "token").chmod(0o600)
    extra = (
        "hardware: {pi5_4k_pages: true}\n"
        "boot:\n  config_txt:\n    all: [dtparam=audio=off, enable_uart=1]\n"
        "    pi4: ['dtoverlay=vc4-kms-v3d,cma-512']"
    )
    (tmp_path / "fleet.yaml").write_text(fleet_yaml(extra=extra))
    proc = pifleet("build", "fleet.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    image = tmp_path / "out" / "edge-fleet.img"
    text = fat_read(image, "/config.txt").decode()
    # tests/layouts.py's config.txt: "# synthetic\narm_64bit=1\ndtparam=audio=on\n"
    assert text == (
        "# synthetic\narm_64bit=1\ndtparam=audio=off\nenable_uart=1\n\n"
        "[pi4]\ndtoverlay=vc4-kms-v3d,cma-512\n\n[pi5]\nkernel=kernel8.img\n"
    )
    again = pifleet("build", "fleet.yaml", "--base", "out/edge-fleet.img", "-o", "b", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert sha256(tmp_path / "b" / "edge-fleet.img") == sha256(image)
    (tmp_path / "fleet.yaml").write_text(fleet_yaml(extra="boot: {config_txt: {all: ['[pi5]']}}"))
    bad = pifleet("build", "fleet.yaml", "-o", "d", cwd=tmp_path)
    assert bad.returncode == 2 and "boot.config_txt.all[0]" in bad.stderr, bad.stderr
