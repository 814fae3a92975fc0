"""`devices_file:` inventories, CSV or YAML, checked with the same rules as `devices:`.

Every invalid or duplicate row is reported at once, one line each, with the
file and line number, so fixing a 500-row inventory takes one round.

CSV columns (header row required, any order):
  hostname, labels (k=v;k2=v2), taints (k=v:NoSchedule;...), address (10.0.0.5/24),
  gateway, dns (a;b), wifi_ssid, wifi_country, wifi_password_env
YAML: a list of mappings with the keys of `devices:` items in config/schema.json.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import yaml

from builder.config.devices import DeviceReader
from builder.config.model import Device, FleetConfig
from builder.config.schema import describe
from builder.util.errors import UserError

COLUMNS = (
    "hostname",
    "labels",
    "taints",
    "address",
    "gateway",
    "dns",
    "wifi_ssid",
    "wifi_country",
    "wifi_password_env",
)


class _RowChecker(DeviceReader):
    """The config's device checks, with messages that name the column, not a config key."""

    def fail(self, key: str, message: str) -> UserError:
        column = key.split(".", 1)[1] if "." in key else key
        return UserError(f"{column}: {message}")


def load(path: Path) -> list[tuple[int, Device]]:
    """(line, device) for every row of the inventory at `path`."""
    if not path.is_file():
        raise UserError(f"{path}: devices_file not found")
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _yaml_rows(path)
    checker = _RowChecker(path, {})
    devices, errors = [], []
    for index, (line, raw) in enumerate(rows):
        try:
            _check_schema(raw)
            devices.append((line, checker.device(raw, index)))
        except UserError as exc:
            errors.append(f"{path.name}:{line}: {exc}")
    seen: dict[str, int] = {}
    for line, device in devices:
        if device.hostname in seen:
            errors.append(
                f"{path.name}:{line}: duplicate hostname {device.hostname!r} (first on line {seen[device.hostname]})"
            )
        seen.setdefault(device.hostname, line)
    if errors:
        raise UserError(f"{path}: {len(errors)} bad rows:\n  " + "\n  ".join(errors))
    return devices


def merged(config: FleetConfig) -> tuple[Device, ...]:
    """Inline `devices:` plus `devices_file:`; a host name in both is an error."""
    if config.devices_file is None:
        return config.devices
    rows = load(config.devices_file)
    inline = {d.hostname for d in config.devices}
    clashes = [
        f"{config.devices_file.name}:{line}: {d.hostname!r} is also in devices:"
        for line, d in rows
        if d.hostname in inline
    ]
    if clashes:
        raise UserError(
            f"{config.source}: devices_file: {len(clashes)} host names defined twice:\n  "
            + "\n  ".join(clashes)
        )
    return config.devices + tuple(d for _line, d in rows)


def _csv_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        unknown = [c for c in header if c not in COLUMNS]
        if "hostname" not in header or unknown:
            problem = f"unknown column {unknown[0]!r}" if unknown else "no hostname column"
            raise UserError(f"{path.name}:1: {problem} (columns: {', '.join(COLUMNS)})")
        return [
            (reader.line_num, _from_csv(row))
            for row in reader
            if any((v or "").strip() for v in row.values())
        ]


def _from_csv(row: dict[str, str | None]) -> dict[str, Any]:
    cells = {k: (v or "").strip() for k, v in row.items() if k}
    out: dict[str, Any] = {"hostname": cells.get("hostname", "")}
    for key in ("labels", "taints", "dns"):
        if cells.get(key):
            out[key] = [part.strip() for part in cells[key].split(";") if part.strip()]
    for key in ("address", "gateway"):
        if cells.get(key):
            out[key] = cells[key]
    if cells.get("wifi_ssid"):
        wifi = {"ssid": cells["wifi_ssid"], "country": cells.get("wifi_country", "")}
        if cells.get("wifi_password_env"):
            wifi["password_env"] = cells["wifi_password_env"]
        out["wifi"] = wifi
    return out


def _yaml_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: YAML error: {exc}") from None
    if not isinstance(node, yaml.SequenceNode):
        raise UserError(f"{path}: expected a list of devices")
    rows = []
    for item in node.value:
        rows.append((item.start_mark.line + 1, yaml.safe_load(yaml.serialize(item))))
    return rows


def _check_schema(raw: Any) -> None:
    from builder.config.schema import device_errors

    for error in device_errors(raw):
        key, message = describe(error)
        raise UserError(f"{key}: {message}" if key else message)
