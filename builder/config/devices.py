"""Reading one device's settings (inline `devices:` or an inventory row), checked key by key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from builder.config import k3sconfig, kubelabels
from builder.config.model import Device, StaticAddress, Wifi
from builder.config.schema import with_defaults
from builder.config.values import _LABEL_VALUE, _TAINT, _scalar, _valid_label_key, static_address
from builder.util.errors import UserError
from builder.util.yamlfile import shown
from firstboot.joinconfig import valid_hostname

MAX_SSID = 32  # bytes (IEEE 802.11), whatever they encode


class DeviceReader:
    """Turns validated raw YAML of devices into dataclasses, checking meaning key by key."""

    def __init__(self, path: Path, raw: dict[str, Any]) -> None:
        self.path = path
        self.raw = raw
        self.dir = path.resolve().parent

    def fail(self, key: str, message: str) -> UserError:
        return UserError(f"{self.path}: {key}: {message}")

    def rel(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.dir / p

    def labels(self, value: dict[str, Any] | list[str], key: str) -> tuple[str, ...]:
        if isinstance(value, dict):
            items = [f"{k}={_scalar(v)}" for k, v in value.items()]
        else:
            items = list(value)
        for i, item in enumerate(items):
            label_key, sep, label_value = item.partition("=")
            if not sep or not _valid_label_key(label_key) or not _LABEL_VALUE.match(label_value):
                where = f"{key}[{i}]" if isinstance(value, list) else f"{key}.{label_key}"
                raise self.fail(where, f"must be a Kubernetes label key=value, got {shown(item)}")
            reserved = kubelabels.problem(item)
            if reserved:
                where = f"{key}[{i}]" if isinstance(value, list) else f"{key}.{label_key}"
                raise self.fail(where, reserved)
        return tuple(items)

    def taints(self, value: list[str], key: str) -> tuple[str, ...]:
        for i, item in enumerate(value):
            match = _TAINT.match(item)
            if not match or not _valid_label_key(match["key"]):
                raise self.fail(
                    f"{key}[{i}]",
                    f"must be key[=value]:NoSchedule|PreferNoSchedule|NoExecute, got {shown(item)}",
                )
        return tuple(value)

    def wifi(self, value: dict[str, Any], key: str) -> Wifi:
        ssid = value["ssid"]
        if len(ssid.encode()) > MAX_SSID:
            raise self.fail(
                f"{key}.ssid", f"an SSID has at most {MAX_SSID} bytes, got {shown(ssid)}"
            )
        return Wifi(
            ssid=value["ssid"],
            country=value["country"],
            password_env=value.get("password_env"),
            hidden=bool(with_defaults(value, "network.wifi")["hidden"]),
        )

    def static(self, value: dict[str, Any], key: str) -> StaticAddress:
        dns = with_defaults(value, "network.static")["dns"]
        return static_address(value["address"], value.get("gateway"), dns, key, self.fail)

    def device(self, value: dict[str, Any], index: int) -> Device:
        key = f"devices[{index}]"
        name = value["hostname"]
        if not valid_hostname(name):
            raise self.fail(f"{key}.hostname", f"must be an RFC 1123 host name, got {shown(name)}")
        static = None
        if "address" in value:
            static = static_address(
                value["address"], value.get("gateway"), value.get("dns", []), key, self.fail
            )
        elif "gateway" in value or "dns" in value:
            raise self.fail(f"{key}.address", "required when gateway or dns is given")
        return Device(
            hostname=name,
            labels=self.labels(value.get("labels", {}), f"{key}.labels"),
            taints=self.taints(value.get("taints", []), f"{key}.taints"),
            static=static,
            wifi=self.wifi(value["wifi"], f"{key}.wifi") if "wifi" in value else None,
            role=value.get("role"),
            board=value.get("board"),
            **self.k3s_settings(value, key),
        )

    def k3s_settings(self, value: dict[str, Any], key: str) -> dict[str, Any]:
        """k3s_config, node_ip, node_external_ip, flannel_iface and advertise_address at `key`
        (cluster or a device), checked as far as the device's role does not matter."""
        return {
            "k3s_config": k3sconfig.read(
                value.get("k3s_config", {}), f"{key}.k3s_config", self.fail
            ),
            "node_ip": k3sconfig.addresses(value.get("node_ip"), f"{key}.node_ip", self.fail),
            "node_external_ip": k3sconfig.addresses(
                value.get("node_external_ip"), f"{key}.node_external_ip", self.fail
            ),
            "flannel_iface": k3sconfig.interface(
                value.get("flannel_iface"), f"{key}.flannel_iface", self.fail
            ),
            "advertise_address": k3sconfig.address(
                value.get("advertise_address"), f"{key}.advertise_address", self.fail
            ),
        }

    def check_unique_hostnames(self, devices: tuple[Device, ...]) -> None:
        seen: dict[str, int] = {}
        for i, dev in enumerate(devices):
            if dev.hostname in seen:
                raise self.fail(
                    f"devices[{i}].hostname",
                    f"duplicate host name {dev.hostname!r} (also devices[{seen[dev.hostname]}])",
                )
            seen[dev.hostname] = i
