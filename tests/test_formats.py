"""Every image family builds with the seed format it understands, read back with independent tools.

Bookworm-, Trixie-, Ubuntu- and rpi-preseed-layout images (tests/layouts.py: real partition
tables, FAT and ext4, a dpkg database and the files the packages ship) are built with the real
CLI; the boot partition is read with mtools, the root with debugfs.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from builder.seed.checks import cloud_config_problems, preseed_problems
from tests.cloudinit_render import networkd_render
from tests.conftest import TEST_TOKEN, fleet_yaml, pifleet
from tests.image_read import fat_names, fat_read, sha256

PASSPHRASE = "correct horse battery"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
WIFI = "network:\n  wifi: {ssid: 'edge net', country: DE, password_env: WIFI_PSK}"
ENV = {"WIFI_PSK": PASSPHRASE}
# WPA PSK of that passphrase for SSID "edge net", computed with OpenSSL, not pifleet's code:
# openssl kdf -keylen 32 -kdfopt digest:SHA1 -kdfopt 'pass:correct horse battery'
#   -kdfopt 'salt:edge net' -kdfopt iter:4096 PBKDF2
PSK = "2239c72d683cfb5a089e9128eb8567d7cc3d5d6b1e68227bc7f9cede7b15c07f"
SYSTEMD_WORDS = (
    "systemd.run=/boot/firmware/firstrun.sh",
    "systemd.run_success_action=reboot",
    "systemd.unit=kernel-command-line.target",
)


def build(
    tmp_path: Path, make_image: Callable[..., Path], layout: str, **sections: str
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    make_image(f"{layout}.img", layout=layout)
    token = tmp_path / "token"
    token.write_text(TEST_TOKEN + "\n")
    token.chmod(0o600)
    (tmp_path / "fleet.yaml").write_text(
        fleet_yaml(base=f"base: {{path: {layout}.img}}", **sections)
    )
    proc = pifleet("build", "fleet.yaml", cwd=tmp_path, env=ENV)
    return tmp_path / "out" / "edge-fleet.img", proc


def inspect(image: Path) -> dict:
    proc = pifleet("inspect", "--json", str(image), cwd=image.parent)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize(
    ("layout", "fmt", "written"),
    [
        ("bookworm", "systemd", ["firstrun.sh"]),
        ("trixie", "cloudinit-rpi", ["user-data", "meta-data", "network-config"]),
        ("ubuntu", "cloudinit", ["user-data", "meta-data", "network-config"]),
        ("preseed", "rpi-preseed", ["rpi-preseed.toml"]),
    ],
)
def test_each_family_builds_with_its_format(
    tmp_path: Path, make_image: Callable[..., Path], layout: str, fmt: str, written: list[str]
) -> None:
    image, proc = build(tmp_path, make_image, layout, network=WIFI)
    assert proc.returncode == 0, proc.stderr
    assert TEST_TOKEN not in proc.stdout + proc.stderr and PASSPHRASE not in proc.stderr
    facts = inspect(image)
    assert facts["os"]["init_format"] == fmt and facts["seed"]["format"] == fmt
    assert sorted(facts["seed"]["files"]) == sorted(written)
    text = pifleet("inspect", str(image), cwd=tmp_path).stdout
    assert f"format     {fmt}: " in text
    # The first-boot agent is installed, enabled and configured whatever the format.
    assert facts["agent"]["enabled"] and facts["agent"]["join"]["server"]
    words = fat_read(image, "/cmdline.txt").decode().split()
    assert words.count("cgroup_enable=memory") == 1 and "cfg80211.ieee80211_regdom=DE" in words
    assert all((w in words) == (fmt == "systemd") for w in SYSTEMD_WORDS), words
    for name in written:
        assert PASSPHRASE.encode() not in fat_read(image, f"/{name}"), name


def test_bookworm_firstrun_script(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    image, proc = build(
        tmp_path,
        make_image,
        "bookworm",
        network=WIFI + "\n  static: {address: 10.0.0.5/24, gateway: 10.0.0.1, dns: [10.0.0.1]}",
        extra="seed: {keyboard: de}\nhardware: {i2c: true}\ntimezone: Europe/Berlin",
    )
    assert proc.returncode == 0, proc.stderr
    script = fat_read(image, "/firstrun.sh").decode()
    assert script.startswith("#!/bin/sh\n\nset +e\n")
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0
    ic = "/usr/lib/raspberrypi-sys-mods/imager_custom"
    assert f"{ic} set_wlan 'edge net' '{PSK}' 'DE'" in script
    assert f"{ic} enable_ssh -k 'ssh-ed25519 " in script
    assert f"{ic} set_keymap 'de'" in script and f"{ic} set_timezone 'Europe/Berlin'" in script
    assert "/usr/lib/userconf-pi/userconf 'ops' '!'" in script
    # Fallbacks: NetworkManager keyfiles on Bookworm (it has NetworkManager), not wpa_supplicant.
    assert "/etc/NetworkManager/system-connections/preconfigured.nmconnection" in script
    assert f"psk={PSK}" in script and "wpa_supplicant.conf" not in script
    assert "address1=10.0.0.5/24,10.0.0.1" in script and "dns=10.0.0.1;" in script
    assert "raspi-config nonint do_i2c 0" in script
    assert "ops ALL=(ALL) NOPASSWD:ALL" in script
    assert script.endswith("exit 0\n")
    # No FAT `rm` of itself (its bytes would stay in free clusters): custody zeroes it later.
    assert "rm -f /boot/firmware/firstrun.sh" not in script
    # The script's own clean-up, run with the real sed on the built cmdline.txt, removes
    # exactly its three words and keeps everything after them.
    cmdline = tmp_path / "cmdline.txt"
    cmdline.write_bytes(fat_read(image, "/cmdline.txt"))
    sed = next(ln for ln in script.splitlines() if ln.startswith("sed -i") and "cmdline" in ln)
    subprocess.run(
        ["sh", "-c", sed.replace("/boot/firmware/cmdline.txt", str(cmdline))], check=True
    )
    after = cmdline.read_text().split()
    assert not [w for w in after if w.startswith("systemd.")]
    assert "cgroup_enable=memory" in after and "cfg80211.ieee80211_regdom=DE" in after
    # Rebuilding on the built image doubles nothing.
    again = pifleet(
        "build", "fleet.yaml", "--base", "out/edge-fleet.img", "-o", "again", cwd=tmp_path, env=ENV
    )
    assert again.returncode == 0, again.stderr
    assert sha256(tmp_path / "again" / "edge-fleet.img") == sha256(image)


def test_bookworm_device_gets_its_name_and_host_key(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    image, proc = build(tmp_path, make_image, "bookworm", devices="devices: [{hostname: pi-7}]")
    assert proc.returncode == 0, proc.stderr
    device = tmp_path / "pi-7.img"
    out = pifleet(
        "personalize", str(image), "--config", "fleet.yaml", "--device", "pi-7",
        "-o", str(device), cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    script = fat_read(device, "/firstrun.sh").decode()
    assert "imager_custom set_hostname pi-7" in script
    public = (tmp_path / "out/devices/pi-7/ssh_host_ed25519_key.pub").read_text().split()[1]
    assert public in script and "BEGIN OPENSSH PRIVATE KEY" in script
    assert "::/user-data" not in fat_names(device).split()
    assert json.loads(fat_read(device, "/pifleet/device.json"))["hostname"] == "pi-7"


def test_rpi_preseed_toml_follows_the_schema(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    users = (
        f"users:\n  - name: ops\n    sudo: true\n    ssh_authorized_keys: ['{KEY} ops@l']"
        f"\n  - name: audit\n    groups: [adm]\n    ssh_authorized_keys: ['{KEY} a@l']"
    )
    image, proc = build(
        tmp_path,
        make_image,
        "preseed",
        users=users,
        network=WIFI + "\n  static: {address: 10.0.0.5/24, gateway: 10.0.0.1}",
        extra="hardware: {spi: true, serial: true}\nseed: {keyboard: gb}",
    )
    assert proc.returncode == 0, proc.stderr
    data = fat_read(image, "/rpi-preseed.toml")
    assert preseed_problems(data) == []
    doc = tomllib.loads(data.decode())
    assert doc["config_version"] == "1.1"
    assert doc["user"] == {"name": "ops", "passwordless_sudo": True, "groups": ["sudo"]}
    assert doc["ssh"]["authorized_keys"] == [f"{KEY} ops@l"]
    assert doc["wlan"] == {
        "ssid": "edge net", "password": PSK, "password_encrypted": True,
        "hidden": False, "country": "DE",
    }  # fmt: skip
    assert doc["ethernet"]["method"] == "static" and doc["ethernet"]["address"] == "10.0.0.5/24"
    assert doc["interfaces"] == {"spi": True, "serial": "hardware"}
    assert doc["locale"]["keymap"] == "gb"
    assert any("useradd" in c and "'audit'" in c for c in doc["runcmd"]["early"])


def test_preseed_schema_catches_what_rpi_preseed_would_refuse() -> None:
    good = b'config_version = "1.1"\n\n[wlan]\nssid = "x"\npassword = "12345678"\n'
    assert preseed_problems(good) == []
    bad = [
        b'config_version = "2.0"\n',  # major must be 1
        b'[system]\nhostname = "x"\n',  # config_version required
        b'config_version = "1.1"\n[wlan]\nssid = "x"\npassword = "short"\n',
        b'config_version = "1.1"\n[wlan]\nssid = "x"\npassword = "abc"\npassword_encrypted = true\n',
        b'config_version = "1.1"\n[ethernet]\nmethod = "dhcp"\naddress = "10.0.0.5/24"\n',
        b'config_version = "1.1"\n[user]\npassword = "x"\n',  # password needs name
        b'config_version = "1.1"\n[interfaces]\nserial = "on"\n',
        b'config_version = "1.1"\n[system]\nhostnme = "x"\n',
        b'config_version = "1.1\n',  # not TOML
    ]
    for text in bad:
        assert preseed_problems(text), text


def test_cloudinit_rpi_gets_imager_parity_keys_ubuntu_does_not(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    extra = (
        "hardware: {i2c: true, spi: true, usb_gadget: true, wifi_country: FR}\nseed: {keyboard: fr}"
    )
    image, proc = build(tmp_path, make_image, "trixie", extra=extra)
    assert proc.returncode == 0, proc.stderr
    user_data = fat_read(image, "/user-data")
    assert cloud_config_problems(user_data) in ([], None)
    doc = yaml.safe_load(user_data)
    assert doc["rpi"] == {"interfaces": {"i2c": True, "spi": True}, "enable_usb_gadget": True}
    assert doc["keyboard"] == {"model": "pc105", "layout": "fr"}
    assert ["rfkill", "unblock", "wifi"] in doc["runcmd"]
    assert "cfg80211.ieee80211_regdom=FR" in fat_read(image, "/cmdline.txt").decode().split()
    assert "wifis" not in yaml.safe_load(fat_read(image, "/network-config"))["network"]

    ubuntu, proc = build(tmp_path, make_image, "ubuntu", extra=extra)
    assert proc.returncode == 0, proc.stderr
    assert "rpi" not in yaml.safe_load(fat_read(ubuntu, "/user-data"))


def test_network_config_as_imager_writes_it(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    image, proc = build(tmp_path, make_image, "trixie", network=WIFI)
    assert proc.returncode == 0, proc.stderr
    net = yaml.safe_load(fat_read(image, "/network-config"))["network"]
    assert net["version"] == 2 and "renderer" not in net
    wlan = net["wifis"]["wlan0"]
    assert wlan["regulatory-domain"] == "DE" and wlan["optional"] is True
    assert wlan["access-points"] == {"edge net": {"password": PSK}}
    user_data = fat_read(image, "/user-data")
    assert cloud_config_problems(user_data) in ([], None)


@pytest.mark.parametrize(
    ("static", "rendered"),
    [
        ("{address: 10.0.0.5/24, gateway: 10.0.0.1, dns: [10.0.0.1]}", "Destination=0.0.0.0/0"),
        ("{address: 'fd00::5/64', gateway: 'fd00::1'}", "[Route]\nGateway=fd00::1\n"),
    ],
)
def test_static_network_config_is_one_cloud_init_renders(
    tmp_path: Path, make_image: Callable[..., Path], static: str, rendered: str
) -> None:
    """The host's real cloud-init (tools/setup.sh installs Debian's) renders network-config for
    systemd-networkd, as on pifleet's Debian bases: a `to: default` route made cloud-init
    before 25.3 fail its whole init-local stage (seen in a QEMU boot of the armhf base)."""
    image, proc = build(tmp_path, make_image, "trixie", network=f"network:\n  static: {static}")
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "network-config").write_bytes(fat_read(image, "/network-config"))
    convert = subprocess.run(
        ["cloud-init", "devel", "net-convert", "-p", str(tmp_path / "network-config"), "-k",
         "yaml", "-O", "networkd", "-D", "debian", "-d", str(tmp_path / "rendered")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert convert.returncode == 0, convert.stderr[-2000:]
    network = (tmp_path / "rendered/etc/systemd/network/10-cloud-init-eth0.network").read_text()
    address = yaml.safe_load(static.replace("{", "{ ").replace("}", " }"))["address"]
    assert f"Address={address}" in network and "DHCP=no" in network, network
    assert rendered in network and "::/64" not in network, network


def test_seed_format_override(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    image, proc = build(tmp_path, make_image, "trixie", extra="seed: {format: systemd}")
    assert proc.returncode == 0, proc.stderr
    assert "::/firstrun.sh" in fat_names(image).split()
    assert "systemd.run=/boot/firmware/firstrun.sh" in fat_read(image, "/cmdline.txt").decode()
    facts = inspect(image)
    assert facts["os"]["init_format"] == "cloudinit-rpi" and facts["seed"]["format"] == "systemd"
    (tmp_path / "fleet.yaml").write_text(
        fleet_yaml(base="base: {path: trixie.img}", extra="seed: {format: rpi-preseed}")
    )
    refused = pifleet("build", "fleet.yaml", "-o", "y", cwd=tmp_path)
    assert refused.returncode == 2
    errors = [ln for ln in refused.stderr.splitlines() if not ln.startswith("warning: ")]
    assert len(errors) == 1 and "seed.format rpi-preseed needs rpi-preseed" in refused.stderr


def test_firstrun_without_sys_mods_uses_plain_commands(tmp_path: Path) -> None:
    """A Debian image without raspberrypi-sys-mods or NetworkManager (pifleet's systemd base)."""
    from builder.config.fleet import load
    from builder.seed import systemd
    from builder.seed.base import ImageTraits, seed_input

    (tmp_path / "f.yaml").write_text(
        fleet_yaml(
            network=WIFI + "\n  static: {address: 10.0.0.5/24, gateway: 10.0.0.1}",
            devices="devices: [{hostname: pi-1}]",
        )
    )
    config = load(tmp_path / "f.yaml")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WIFI_PSK", PASSPHRASE)
        inp = seed_input(config, config.devices[0])
    seed = systemd.render(inp, ImageTraits("systemd", "/boot/firmware"))
    script = seed.files["/firstrun.sh"].decode()
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0
    assert "imager_custom" not in script and "userconf" not in script
    assert "echo pi-1 > /etc/hostname" in script
    assert "useradd -m -s '/bin/bash' 'ops'" in script
    assert f"\tpsk={PSK}\n" in script and '\tssid="edge net"\n' in script
    assert "/etc/systemd/network/10-pifleet-eth0.network" in script
    assert seed.cmdline == SYSTEMD_WORDS


def test_detection_reads_dpkg_first_and_marker_files_without_it(tmp_path: Path) -> None:
    from dataclasses import replace

    from builder.detect.flavor import detect
    from builder.disk.image import Image
    from tests.layouts import BOOKWORM, TRIXIE, make_pi_image

    # cloud-init's program left behind, but dpkg says the package was removed: still Bookworm.
    leftover = replace(BOOKWORM, markers=(*BOOKWORM.markers, "/usr/bin/cloud-init"))
    seed = detect(Image.open(make_pi_image(tmp_path / "b.img", leftover))).seed
    assert seed is not None and seed.format == "systemd" and "(dpkg)" in seed.reason
    assert seed.imager_custom and seed.userconf and seed.network_manager
    # No dpkg database at all: the files the packages ship decide.
    bare = replace(TRIXIE, packages=())
    seed = detect(Image.open(make_pi_image(tmp_path / "t.img", bare))).seed
    assert seed is not None and seed.format == "cloudinit-rpi" and "marker files" in seed.reason
    assert seed.datasource == "seedfrom: file:///boot/firmware"


def test_preseed_device_gets_its_host_name(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    image, proc = build(tmp_path, make_image, "preseed", devices="devices: [{hostname: pi-9}]")
    assert proc.returncode == 0, proc.stderr
    device = tmp_path / "pi-9.img"
    out = pifleet(
        "personalize", str(image), "--config", "fleet.yaml", "--device", "pi-9",
        "-o", str(device), cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = fat_read(device, "/rpi-preseed.toml")
    assert preseed_problems(data) == []
    assert tomllib.loads(data.decode())["system"] == {"hostname": "pi-9"}
    assert "system" not in tomllib.loads(fat_read(image, "/rpi-preseed.toml").decode())


def test_static_network_config_passes_cloud_inits_own_parser(tmp_path: Path) -> None:
    """A static address with a gateway, through cloud-init's parser and networkd renderer
    (what a Debian image with networkd runs; netplan's `to: default` fails there)."""
    if (
        not Path("/usr/bin/python3").exists()
        or subprocess.run(
            ["/usr/bin/python3", "-c", "import cloudinit"], capture_output=True
        ).returncode
    ):
        pytest.skip("cloud-init is not installed (tools/setup.sh installs it)")
    from builder import version
    from builder.config.model import StaticAddress
    from builder.util.render import render

    text = render("network-config", version=version(), ethernet="eth0",
                  static=StaticAddress("10.77.0.1/24", "10.77.0.254", ()), wifi=None, wifi_psk=None)  # fmt: skip
    network = tmp_path / "network-config"
    network.write_bytes(text)
    rendered = networkd_render(network)
    assert rendered.returncode == 0, rendered.stderr[-500:]
    assert "Destination=0.0.0.0/0" in rendered.stdout and "Gateway=10.77.0.254" in rendered.stdout
