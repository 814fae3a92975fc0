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
import io
from pathlib import Path
from typing import Any

import yaml

from builder.config.devices import DeviceReader
from builder.config.model import Device, FleetConfig
from builder.config.schema import describe
from builder.util.errors import UserError
from builder.util.yamlfile import check_values, parse_yaml, read_text

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
    # A BOM: Excel's "CSV UTF-8" export starts with one.
    text = read_text(path, "devices_file").removeprefix("\ufeff")
    is_csv = path.suffix.lower() == ".csv"
    rows = _csv_rows(text, path) if is_csv else _yaml_rows(text, path)
    checker = _RowChecker(path, {})
    devices, errors = [], []
    for index, (line, raw) in enumerate(rows):
        try:
            raw = _from_csv(raw) if is_csv else raw
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


def _csv_rows(text: str, path: Path) -> list[tuple[int, dict[Any, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    unknown = [c for c in header if c not in COLUMNS]
    if "hostname" not in header or unknown:
        problem = f"unknown column {unknown[0]!r}" if unknown else "no hostname column"
        raise UserError(f"{path.name}:1: {problem} (columns: {', '.join(COLUMNS)})")
    try:
        rows = [
            (reader.line_num, row)
            for row in reader
            if any((v if isinstance(v, str) else "x").strip() for v in row.values())
        ]
    except csv.Error as exc:
        # line_num counts the lines of the rows read whole; the failing one starts after them.
        raise UserError(f"{path}:{reader.line_num + 1}: CSV error: {exc}") from None
    check_values([{k: v for k, v in row.items() if k} for _line, row in rows], path)
    return rows


def _from_csv(row: dict[Any, Any]) -> dict[str, Any]:
    if None in row:  # csv.DictReader's place for cells beyond the header
        raise UserError(f"{len(row) - 1 + len(row[None])} fields but the header has {len(row) - 1}")
    cells = {k: (v or "").strip() for k, v in row.items() if k}
    if not cells.get("wifi_ssid"):
        stray = [k for k in ("wifi_country", "wifi_password_env") if cells.get(k)]
        if stray:
            raise UserError(f"{stray[0]}: given without wifi_ssid")
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


def _yaml_rows(text: str, path: Path) -> list[tuple[int, dict[str, Any]]]:
    data = parse_yaml(text, path)  # the fleet file's strict rules: one line, duplicates refused
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of devices")
    node = yaml.compose(text)  # parsed once already: only for each item's line
    assert isinstance(node, yaml.SequenceNode)
    rows = [(item.start_mark.line + 1, raw) for item, raw in zip(node.value, data, strict=True)]
    check_values([raw for _line, raw in rows], path)
    return rows


def _check_schema(raw: Any) -> None:
    from builder.config.schema import device_errors

    for error in device_errors(raw):
        key, message = describe(error)
        raise UserError(f"{key}: {message}" if key else message)
