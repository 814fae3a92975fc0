"""Validated raw fleet YAML -> `FleetConfig`, checking meaning key by key."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from builder.config.devices import DeviceReader
from builder.config.model import (
    DEFAULT_CHANNEL_URL,
    DEFAULT_RELEASE_URL,
    AgentTuning,
    Arch,
    BaseSource,
    Cluster,
    ConfigTxtLine,
    FleetConfig,
    Hardware,
    K3sSource,
    Network,
    Output,
    SeedSettings,
    User,
)
from builder.config.values import interface_problem, parse_size, ssh_key_problem
from builder.util.yamlfile import shown
from firstboot.joinconfig import valid_hostname

MAX_IMAGE_SIZE = 2 * 1024**4  # 2 TiB: the largest SD card sold


class FleetReader(DeviceReader):
    """The whole fleet file; device keys are read by `DeviceReader`."""

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
            users=tuple(self.user(u, i) for i, u in enumerate(raw.get("users", []))),
            network=self.network(raw.get("network", {})),
            timezone=raw.get("timezone", "Etc/UTC"),
            locale=raw.get("locale", "en_US.UTF-8"),
            hostname_pattern=self.hostname_pattern(raw.get("hostname_pattern", "pi-{serial}")),
            devices=devices,
            devices_file=self.rel(devices_file) if devices_file else None,
            output=self.output(raw.get("output", {})),
            agent=AgentTuning(
                backoff_cap=self.seconds(raw.get("agent", {}), "backoff_cap", 60),
                clock_sync_timeout=self.seconds(raw.get("agent", {}), "clock_sync_timeout", 120),
                recheck_interval=self.seconds(raw.get("agent", {}), "recheck_interval", 600),
                start_timeout=self.seconds(raw.get("agent", {}), "start_timeout", 900),
            ),
            config_hash=hashlib.sha256(canonical.encode()).hexdigest(),
            seed=SeedSettings(**raw.get("seed", {})),
            hardware=Hardware(**raw.get("hardware", {})),
            config_txt=tuple(
                ConfigTxtLine(section, line)
                for section, lines in raw.get("boot", {}).get("config_txt", {}).items()
                for line in lines
            ),
        )

    def seconds(self, agent: dict[str, Any], key: str, default: float) -> float:
        """A finite number of seconds (the schema bounds it; NaN passes every bound)."""
        value = float(agent.get(key, default))
        if not math.isfinite(value):
            raise self.fail(f"agent.{key}", f"must be a number of seconds, got {value}")
        return value

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
        create = self.creation(value)
        if not create and has_file == has_env:
            raise self.fail("cluster", "give exactly one of token_file or token_env")
        return Cluster(
            server=self.server(value["server"]),
            token_file=self.rel(value["token_file"]) if has_file else self.created_token(value),
            token_env=value.get("token_env"),
            token_in_boot=bool(value.get("token_in_boot", False)),
            role=value.get("role", "agent"),
            node_labels=self.labels(value.get("node_labels", {}), "cluster.node_labels"),
            node_taints=self.taints(value.get("node_taints", []), "cluster.node_taints"),
            kubelet_args=self.kubelet_args(value.get("kubelet_args", [])),
            create=create,
            servers=tuple(value.get("servers", [])),
            agent_token=bool(value.get("agent_token", False)),
            initialized=bool(value.get("initialized", False)),
            ca_hash=value.get("ca_hash"),
            ca_file=self.rel(value["ca_file"]) if "ca_file" in value else None,
            allow_unpinned=bool(value.get("allow_unpinned", False)),
            proxy=self.proxy(value.get("proxy", {})),
        )

    def proxy(self, value: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        """install.sh's proxy variables; checked with the agent's own rule."""
        from firstboot.joinconfig import JoinConfigError, check_proxy

        pairs = {str(k): str(v) for k, v in value.items()}
        try:
            check_proxy(pairs, "proxy")
        except JoinConfigError as exc:
            raise self.fail("cluster.proxy", str(exc).split(": ", 2)[-1]) from None
        return tuple(sorted(pairs.items()))

    def creation(self, value: dict[str, Any]) -> bool:
        """`create: true` and the keys that go with it, or without it."""
        if not value.get("create", False):
            for key in ("servers", "agent_token", "initialized"):
                if key in value:
                    raise self.fail(f"cluster.{key}", "only meaningful with cluster.create: true")
            return False
        for key, why in (
            ("token_file", "the token is cluster/token, made by `pifleet cluster init`"),
            ("token_env", "the token is cluster/token, made by `pifleet cluster init`"),
            (
                "role",
                "servers get role server from cluster.servers; every other device is an agent",
            ),
        ):
            if key in value:
                raise self.fail(f"cluster.{key}", f"not with cluster.create: true ({why})")
        if not value.get("servers"):
            raise self.fail(
                "cluster.servers",
                "required with cluster.create: true (the devices that run k3s server)",
            )
        return True

    def created_token(self, value: dict[str, Any]) -> Path | None:
        """With create: the token agents carry (the golden image's); servers get cluster/token."""
        if not value.get("create", False):
            return None
        return self.dir / "cluster" / ("agent-token" if value.get("agent_token") else "token")

    def server(self, value: str) -> str:
        """https://host[:port] with a real host name or address and a port in 1-65535."""
        url = urlsplit(value.rstrip("/"))
        try:
            port = url.port
        except ValueError:
            raise self.fail("cluster.server", f"port must be 1-65535, got {shown(value)}") from None
        host = url.hostname or ""
        plain = re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host) is not None
        if url.scheme != "https" or not (plain or _is_ip(host)) or url.username or url.password:
            raise self.fail("cluster.server", f"must be https://host[:port], got {shown(value)}")
        if port == 0 or url.path or url.query or url.fragment:
            raise self.fail(
                "cluster.server",
                f"must be https://host[:port] and nothing more, got {shown(value)}",
            )
        return url.geturl()

    def kubelet_args(self, value: list[str]) -> tuple[str, ...]:
        for i, item in enumerate(value):
            if not re.match(r"^[a-z0-9][a-z0-9-]*=", item):
                raise self.fail(f"cluster.kubelet_args[{i}]", f"must be name=value, got {item!r}")
        return tuple(value)

    def user(self, value: dict[str, Any], index: int) -> User:
        keys = value.get("ssh_authorized_keys", [])
        for i, key in enumerate(keys):
            problem = ssh_key_problem(key)
            if problem:
                where = f"users[{index}].ssh_authorized_keys[{i}]"
                raise self.fail(where, f"must be {problem}, got {shown(key)}")
        return User(
            name=value["name"],
            ssh_authorized_keys=tuple(keys),
            sudo=bool(value.get("sudo", False)),
            groups=tuple(value.get("groups", [])),
            shell=value.get("shell", "/bin/bash"),
        )

    def network(self, value: dict[str, Any]) -> Network:
        ethernet = value.get("ethernet", "eth0")
        problem = interface_problem(ethernet)
        if problem:
            raise self.fail("network.ethernet", f"must be {problem}, got {shown(ethernet)}")
        return Network(
            ethernet=ethernet,
            wifi=self.wifi(value["wifi"], "network.wifi") if "wifi" in value else None,
            static=self.static(value["static"], "network.static") if "static" in value else None,
        )

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
            size=self.size(size),
        )

    def size(self, value: object) -> int | None:
        if value is None:
            return None
        size = parse_size(str(value))
        if not 0 < size <= MAX_IMAGE_SIZE:
            raise self.fail("output.size", f"must be between 1 byte and 2T, got {shown(value)}")
        return size


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
