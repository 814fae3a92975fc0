"""Fleet YAML -> typed, validated `FleetConfig` (frozen dataclasses), read once.

Structure, types, defaults and unknown keys are checked against
`config/schema.json` (the same file editors use); meaning (labels, taints,
addresses, unique host names, mutually exclusive keys) is checked here. Every
error is one line: `<file>: <key.path>: <what was expected>, got <value>`.
Files named by the config (token, base, binary) are checked when the build plan
resolves them, not here.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from builder.util.errors import UserError
from builder.util.yamlfile import read_yaml
from firstboot.joinconfig import valid_hostname

DEFAULT_RELEASE_URL = "https://github.com/k3s-io/k3s/releases/download"
DEFAULT_CHANNEL_URL = "https://update.k3s.io/v1-release/channels"

Arch = Literal["arm64", "armhf"]


@dataclass(frozen=True)
class BaseSource:
    """Exactly one of name (catalog), path or url is set."""

    name: str | None = None
    path: Path | None = None
    url: str | None = None
    sha256: str | None = None
    os_list: str | None = None


@dataclass(frozen=True)
class K3sSource:
    """Exactly one of version, channel or binary is set."""

    version: str | None = None
    channel: str | None = None
    binary: Path | None = None
    sha256: str | None = None
    release_url: str = DEFAULT_RELEASE_URL
    channel_url: str = DEFAULT_CHANNEL_URL
    airgap_images: bool = False
    airgap_path: Path | None = None
    test_standin: bool = False


@dataclass(frozen=True)
class Cluster:
    server: str
    token_file: Path | None
    token_env: str | None
    token_in_boot: bool
    role: Literal["agent", "server"]
    node_labels: tuple[str, ...]
    node_taints: tuple[str, ...]
    kubelet_args: tuple[str, ...]


@dataclass(frozen=True)
class User:
    name: str
    ssh_authorized_keys: tuple[str, ...]
    sudo: bool
    groups: tuple[str, ...]
    shell: str


@dataclass(frozen=True)
class Wifi:
    ssid: str
    country: str
    password_env: str | None
    hidden: bool


@dataclass(frozen=True)
class StaticAddress:
    address: str
    gateway: str | None
    dns: tuple[str, ...]


@dataclass(frozen=True)
class Network:
    ethernet: str
    wifi: Wifi | None
    static: StaticAddress | None


@dataclass(frozen=True)
class Device:
    hostname: str
    labels: tuple[str, ...]
    taints: tuple[str, ...]
    static: StaticAddress | None
    wifi: Wifi | None


@dataclass(frozen=True)
class Output:
    dir: Path
    formats: tuple[str, ...]
    bmap: bool
    size: int | None


@dataclass(frozen=True)
class AgentTuning:
    backoff_cap: float
    clock_sync_timeout: float


@dataclass(frozen=True)
class FleetConfig:
    source: Path
    name: str
    arch: Arch
    base: BaseSource
    k3s: K3sSource
    cluster: Cluster
    users: tuple[User, ...]
    network: Network
    timezone: str
    locale: str
    hostname_pattern: str
    devices: tuple[Device, ...]
    devices_file: Path | None
    output: Output
    agent: AgentTuning
    config_hash: str

    def where(self, key: str) -> str:
        """Prefix for an error about `key` of this config: '<file>: <key>'."""
        return f"{self.source}: {key}"


def load(path: Path) -> FleetConfig:
    """Read, validate and type the fleet file at `path`."""
    raw = read_yaml(path, what="fleet config")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of settings at the top level")
    from builder.config.schema import validate

    validate(raw, path)
    config = _Builder(path, raw).build()
    if config.devices_file is not None:
        from dataclasses import replace

        from builder.config.inventory import merged

        config = replace(config, devices=merged(config))
    return config


class _Builder:
    """Turns validated raw YAML into dataclasses, checking meaning key by key."""

    def __init__(self, path: Path, raw: dict[str, Any]) -> None:
        self.path = path
        self.raw = raw
        self.dir = path.resolve().parent

    def fail(self, key: str, message: str) -> UserError:
        return UserError(f"{self.path}: {key}: {message}")

    def rel(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.dir / p

    def build(self) -> FleetConfig:
        raw = self.raw
        arch: Arch = raw.get("arch", "arm64")
        devices = tuple(self.device(d, i) for i, d in enumerate(raw.get("devices", [])))
        self.check_unique_hostnames(devices)
        devices_file = raw.get("devices_file")
        canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
        return FleetConfig(
            source=self.path,
            name=raw["name"],
            arch=arch,
            base=self.base(raw.get("base"), arch),
            k3s=self.k3s(raw.get("k3s", {})),
            cluster=self.cluster(raw["cluster"]),
            users=tuple(self.user(u) for u in raw.get("users", [])),
            network=self.network(raw.get("network", {})),
            timezone=raw.get("timezone", "Etc/UTC"),
            locale=raw.get("locale", "en_US.UTF-8"),
            hostname_pattern=self.hostname_pattern(raw.get("hostname_pattern", "pi-{serial}")),
            devices=devices,
            devices_file=self.rel(devices_file) if devices_file else None,
            output=self.output(raw.get("output", {})),
            agent=AgentTuning(
                backoff_cap=float(raw.get("agent", {}).get("backoff_cap", 60)),
                clock_sync_timeout=float(raw.get("agent", {}).get("clock_sync_timeout", 120)),
            ),
            config_hash=hashlib.sha256(canonical.encode()).hexdigest(),
        )

    def base(self, value: str | dict[str, Any] | None, arch: str) -> BaseSource:
        if value is None:
            return BaseSource(name=f"raspios-trixie-lite-{arch}")
        if isinstance(value, str):
            return BaseSource(name=value)
        chosen = [k for k in ("name", "path", "url") if k in value]
        if len(chosen) != 1:
            raise self.fail("base", "give exactly one of name, path or url")
        if "url" in value and "sha256" not in value:
            raise self.fail("base.sha256", "required with base.url (every download is verified)")
        if "os_list" in value and "name" not in value:
            raise self.fail("base.os_list", "only meaningful with base.name")
        return BaseSource(
            name=value.get("name"),
            path=self.rel(value["path"]) if "path" in value else None,
            url=value.get("url"),
            sha256=value.get("sha256", "").lower() or None,
            os_list=value.get("os_list"),
        )

    def k3s(self, value: dict[str, Any]) -> K3sSource:
        chosen = [k for k in ("version", "channel", "binary") if k in value]
        if len(chosen) > 1:
            raise self.fail("k3s", f"give only one of version, channel or binary, got {chosen}")
        if "sha256" in value and "binary" not in value:
            raise self.fail("k3s.sha256", "only meaningful with k3s.binary")
        if value.get("test_standin") and "binary" not in value:
            raise self.fail("k3s.test_standin", "requires k3s.binary (the stand-in file)")
        airgap = value.get("airgap_images", False)
        return K3sSource(
            version=value.get("version"),
            channel=value.get("channel") or (None if chosen else "stable"),
            binary=self.rel(value["binary"]) if "binary" in value else None,
            sha256=value.get("sha256", "").lower() or None,
            release_url=value.get("release_url", DEFAULT_RELEASE_URL).rstrip("/"),
            channel_url=value.get("channel_url", DEFAULT_CHANNEL_URL).rstrip("/"),
            airgap_images=bool(airgap),
            airgap_path=self.rel(airgap) if isinstance(airgap, str) else None,
            test_standin=bool(value.get("test_standin", False)),
        )

    def cluster(self, value: dict[str, Any]) -> Cluster:
        has_file, has_env = "token_file" in value, "token_env" in value
        if has_file == has_env:
            raise self.fail("cluster", "give exactly one of token_file or token_env")
        return Cluster(
            server=value["server"].rstrip("/"),
            token_file=self.rel(value["token_file"]) if has_file else None,
            token_env=value.get("token_env"),
            token_in_boot=bool(value.get("token_in_boot", False)),
            role=value.get("role", "agent"),
            node_labels=self.labels(value.get("node_labels", {}), "cluster.node_labels"),
            node_taints=self.taints(value.get("node_taints", []), "cluster.node_taints"),
            kubelet_args=self.kubelet_args(value.get("kubelet_args", [])),
        )

    def labels(self, value: dict[str, Any] | list[str], key: str) -> tuple[str, ...]:
        if isinstance(value, dict):
            items = [f"{k}={_scalar(v)}" for k, v in value.items()]
        else:
            items = list(value)
        for i, item in enumerate(items):
            label_key, sep, label_value = item.partition("=")
            if not sep or not _valid_label_key(label_key) or not _LABEL_VALUE.match(label_value):
                where = f"{key}[{i}]" if isinstance(value, list) else f"{key}.{label_key}"
                raise self.fail(where, f"must be a Kubernetes label key=value, got {item!r}")
        return tuple(items)

    def taints(self, value: list[str], key: str) -> tuple[str, ...]:
        for i, item in enumerate(value):
            match = _TAINT.match(item)
            if not match or not _valid_label_key(match["key"]):
                raise self.fail(
                    f"{key}[{i}]",
                    f"must be key[=value]:NoSchedule|PreferNoSchedule|NoExecute, got {item!r}",
                )
        return tuple(value)

    def kubelet_args(self, value: list[str]) -> tuple[str, ...]:
        for i, item in enumerate(value):
            if not re.match(r"^[a-z0-9][a-z0-9-]*=", item):
                raise self.fail(f"cluster.kubelet_args[{i}]", f"must be name=value, got {item!r}")
        return tuple(value)

    def user(self, value: dict[str, Any]) -> User:
        return User(
            name=value["name"],
            ssh_authorized_keys=tuple(value.get("ssh_authorized_keys", [])),
            sudo=bool(value.get("sudo", False)),
            groups=tuple(value.get("groups", [])),
            shell=value.get("shell", "/bin/bash"),
        )

    def network(self, value: dict[str, Any]) -> Network:
        return Network(
            ethernet=value.get("ethernet", "eth0"),
            wifi=self.wifi(value["wifi"]) if "wifi" in value else None,
            static=self.static(value["static"], "network.static") if "static" in value else None,
        )

    def wifi(self, value: dict[str, Any]) -> Wifi:
        return Wifi(
            ssid=value["ssid"],
            country=value["country"],
            password_env=value.get("password_env"),
            hidden=bool(value.get("hidden", False)),
        )

    def static(self, value: dict[str, Any], key: str) -> StaticAddress:
        return static_address(
            value["address"], value.get("gateway"), value.get("dns", []), key, self.fail
        )

    def device(self, value: dict[str, Any], index: int) -> Device:
        key = f"devices[{index}]"
        name = value["hostname"]
        if not valid_hostname(name):
            raise self.fail(f"{key}.hostname", f"must be an RFC 1123 host name, got {name!r}")
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
            wifi=self.wifi(value["wifi"]) if "wifi" in value else None,
        )

    def check_unique_hostnames(self, devices: tuple[Device, ...]) -> None:
        seen: dict[str, int] = {}
        for i, dev in enumerate(devices):
            if dev.hostname in seen:
                raise self.fail(
                    f"devices[{i}].hostname",
                    f"duplicate host name {dev.hostname!r} (also devices[{seen[dev.hostname]}])",
                )
            seen[dev.hostname] = i

    def hostname_pattern(self, value: str) -> str:
        sample = value.replace("{serial}", "0" * 16)
        if not valid_hostname(sample):
            raise self.fail(
                "hostname_pattern",
                f"gives host names longer than 63 characters or starting/ending with '-': {value!r}",
            )
        return value

    def output(self, value: dict[str, Any]) -> Output:
        size = value.get("size")
        return Output(
            dir=self.rel(value.get("dir", "out")),
            formats=tuple(value.get("formats", ["img"])),
            bmap=bool(value.get("bmap", True)),
            size=parse_size(str(size)) if size is not None else None,
        )


_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_TAINT = re.compile(
    r"^(?P<key>[^=:]+)(=(?P<value>[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?)?"
    r":(?P<effect>NoSchedule|PreferNoSchedule|NoExecute)$"
)
_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([KMGT]?)(i?B?)$")


def _valid_label_key(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and not _LABEL_PREFIX.match(prefix):
        return False
    return bool(_LABEL_NAME.match(name))


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def static_address(
    address: str, gateway: str | None, dns: list[str], key: str, fail: Any
) -> StaticAddress:
    """A checked static address; `fail(key, message)` builds the error."""
    try:
        iface = ipaddress.ip_interface(address)
    except ValueError:
        raise fail(
            f"{key}.address", f"must be an address with prefix such as 10.0.0.5/24, got {address!r}"
        ) from None
    if "/" not in address:
        raise fail(f"{key}.address", f"needs a prefix length such as /24, got {address!r}")
    if gateway is not None:
        try:
            gw = ipaddress.ip_address(gateway)
        except ValueError:
            raise fail(f"{key}.gateway", f"must be an IP address, got {gateway!r}") from None
        if gw not in iface.network:
            raise fail(f"{key}.gateway", f"{gateway} is not in {iface.network}")
    for i, server in enumerate(dns):
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise fail(f"{key}.dns[{i}]", f"must be an IP address, got {server!r}") from None
    return StaticAddress(address=address, gateway=gateway, dns=tuple(dns))


def parse_size(text: str) -> int:
    """'4G', '3500M', '4GiB', '1073741824' -> bytes (powers of 1024)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise UserError(f"not a size: {text!r} (expected e.g. 4G or 3500M)")
    number, unit = float(match.group(1)), match.group(2)
    return int(number * 1024 ** " KMGT".index(unit or " "))
