"""devices_file inventories: every bad row reported at once, with line numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.config.fleet import load
from builder.util.errors import UserError
from tests.conftest import fleet_yaml


def config_with(
    tmp_path: Path, inventory: str, name: str = "devices.csv", inline: str = ""
) -> Path:
    (tmp_path / name).write_text(inventory)
    (tmp_path / "fleet.yaml").write_text(fleet_yaml(devices=inline, extra=f"devices_file: {name}"))
    return tmp_path / "fleet.yaml"


def test_csv_inventory_loads(tmp_path: Path) -> None:
    csv = (
        "hostname,labels,taints,address,gateway,dns,wifi_ssid,wifi_country,wifi_password_env\n"
        "pi-001,zone=a;rack=r1,,10.1.0.11/24,10.1.0.1,1.1.1.1;9.9.9.9,,,\n"
        "\n"
        "pi-002,,edge=true:NoSchedule,,,,shop,DE,SHOP_PSK\n"
    )
    config = load(config_with(tmp_path, csv, inline="devices: [{hostname: pi-000}]"))
    assert [d.hostname for d in config.devices] == ["pi-000", "pi-001", "pi-002"]
    first, second = config.devices[1], config.devices[2]
    assert first.labels == ("zone=a", "rack=r1") and first.static is not None
    assert first.static.dns == ("1.1.1.1", "9.9.9.9")
    assert (
        second.taints == ("edge=true:NoSchedule",)
        and second.wifi is not None
        and second.wifi.country == "DE"
    )


def test_every_bad_csv_row_is_reported_at_once(tmp_path: Path) -> None:
    csv = (
        "hostname,labels,address\n"
        "pi-001,,\n"
        "Pi_7,,\n"
        "pi-003,zone a,\n"
        "pi-001,,\n"
        "pi-005,,10.0.0.999/24\n"
    )
    with pytest.raises(UserError) as info:
        load(config_with(tmp_path, csv))
    lines = str(info.value).splitlines()
    assert lines[0].endswith("devices.csv: 4 bad rows:")
    assert "devices.csv:3: hostname: must be an RFC 1123 host name, got 'Pi_7'" in lines[1]
    assert "devices.csv:4: labels" in lines[2] and "'zone a'" in lines[2]
    assert "devices.csv:6: address: must be an address with prefix" in lines[3]
    assert "devices.csv:5: duplicate hostname 'pi-001' (first on line 2)" in lines[4]


def test_unknown_column_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"devices\.csv:1: unknown column 'colour'"):
        load(config_with(tmp_path, "hostname,colour\npi-1,red\n"))
    (tmp_path / "fleet.yaml").write_text(fleet_yaml(extra="devices_file: nope.csv"))
    with pytest.raises(UserError, match=r"nope\.csv: devices_file not found"):
        load(tmp_path / "fleet.yaml")


def test_yaml_inventory_with_line_numbers_and_clash_with_inline(tmp_path: Path) -> None:
    inventory = "- hostname: pi-010\n  labels: {zone: b}\n- hostname: pi-011\n  colour: blue\n"
    with pytest.raises(UserError) as info:
        load(config_with(tmp_path, inventory, name="devices.yaml"))
    assert "devices.yaml:3: colour: unknown key" in str(info.value)
    good = "- hostname: pi-010\n- hostname: pi-011\n"
    with pytest.raises(UserError, match=r"devices\.yaml:1: 'pi-010' is also in devices:"):
        load(
            config_with(tmp_path, good, name="devices.yaml", inline="devices: [{hostname: pi-010}]")
        )
