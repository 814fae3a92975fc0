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

from builder.config import kubeadm, registries
from builder.config.devices import DeviceReader
from builder.config.model import (
    AgentTuning,
    Arch,
    BaseSource,
    Cluster,
    ConfigTxtLine,
    FleetConfig,
    Hardware,
    K3sSource,
    KubernetesBinaries,
    Network,
    Output,
    SeedSettings,
    User,
)
from builder.config.schema import with_defaults
from builder.config.values import interface_problem, parse_size, ssh_key_problem
from builder.util.yamlfile import shown
from firstboot.joinconfig import valid_hostname

MAX_IMAGE_SIZE = 2 * 1024**4  # 2 TiB: the largest SD card sold
BINARY_KEYS = ("kubeadm", "kubelet", "kubectl")  # kubernetes: local files, without a version


class FleetReader(DeviceReader):
    """The whole fleet file; device keys are read by `DeviceReader`."""

    def build(self) -> FleetConfig:
        canonical = json.dumps(self.raw, sort_keys=True, separators=(",", ":"), default=str)
        raw = with_defaults(self.raw, "")
        self.check_kind(raw)
        arch: Arch = raw["arch"]
        devices = tuple(self.device(d, i) for i, d in enumerate(raw["devices"]))
        self.check_unique_hostnames(devices)
        devices_file = raw.get("devices_file")
        agent = with_defaults(raw.get("agent", {}), "agent")
        return FleetConfig(
            source=self.path,
            name=raw["name"],
            arch=arch,
            base=self.base(raw.get("base"), arch),
            k3s=self.k3s(raw.get("k3s", {})),
            cluster=self.cluster(raw["cluster"]),
            users=tuple(self.user(u, i) for i, u in enumerate(raw["users"])),
            network=self.network(raw.get("network", {})),
            timezone=raw["timezone"],
            locale=raw["locale"],
            hostname_pattern=self.hostname_pattern(raw["hostname_pattern"]),
            devices=devices,
            devices_file=self.rel(devices_file) if devices_file else None,
            output=self.output(raw.get("output", {})),
            agent=AgentTuning(
                backoff_cap=self.seconds(agent, "backoff_cap"),
                clock_sync_timeout=self.seconds(agent, "clock_sync_timeout"),
                recheck_interval=self.seconds(agent, "recheck_interval"),
                start_timeout=self.seconds(agent, "start_timeout"),
            ),
            config_hash=hashlib.sha256(canonical.encode()).hexdigest(),
            seed=SeedSettings(**raw.get("seed", {})),
            hardware=Hardware(**with_defaults(raw.get("hardware", {}), "hardware")),
            config_txt=tuple(
                ConfigTxtLine(section, line)
                for section, lines in raw.get("boot", {}).get("config_txt", {}).items()
                for line in lines
            ),
            kubernetes=self.kubernetes(raw.get("kubernetes")),
        )

    def check_kind(self, raw: dict[str, Any]) -> None:
        """With kind kubeadm, the K3s-only sections and device keys are refused."""
        if with_defaults(raw["cluster"], "cluster")["kind"] != kubeadm.KIND:
            return
        if "k3s" in self.raw:
            raise self.fail(
                "k3s", "only with cluster.kind: k3s (the K3s binary; kubeadm nodes do not run K3s)"
            )
        if "kubernetes" not in self.raw:
            raise self.fail(
                "kubernetes", "required with cluster.kind: kubeadm (the kubeadm, kubelet and"
                " kubectl binaries for the image's architecture)",
            )  # fmt: skip
        kubeadm.check_devices(raw["devices"], self.fail)

    def kubernetes(self, value: dict[str, Any] | None) -> KubernetesBinaries | None:
        if value is None:
            return None
        if with_defaults(self.raw["cluster"], "cluster")["kind"] != kubeadm.KIND:
            raise self.fail("kubernetes", "only with cluster.kind: kubeadm (K3s brings its own)")
        sums = value.get("sha256", {})
        files = [k for k in BINARY_KEYS if k in value]
        if "version" in value and (files or sums):
            raise self.fail(
                "kubernetes", "give kubernetes.version or the three binaries, not both"
            )  # fmt: skip
        if "version" not in value and len(files) != len(BINARY_KEYS):
            missing = next(k for k in BINARY_KEYS if k not in value)
            raise self.fail(
                f"kubernetes.{missing}", "required without kubernetes.version (a local file)"
            )  # fmt: skip
        filled = with_defaults(value, "kubernetes")
        return KubernetesBinaries(
            kubeadm=self.rel(value["kubeadm"]) if "kubeadm" in value else None,
            kubelet=self.rel(value["kubelet"]) if "kubelet" in value else None,
            kubectl=self.rel(value["kubectl"]) if "kubectl" in value else None,
            sha256=tuple(sorted((k, v.lower()) for k, v in sums.items())),
            version=value.get("version"),
            release_url=filled["release_url"].rstrip("/"),
            test_standin=bool(value.get("test_standin", False)),
        )

    def seconds(self, agent: dict[str, Any], key: str) -> float:
        """A finite number of seconds (the schema bounds it; NaN passes every bound)."""
        value = float(agent[key])
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
        filled = with_defaults(value, "k3s")
        airgap = filled["airgap_images"]
        return K3sSource(
            version=value.get("version"),
            channel=value.get("channel") or (None if chosen else "stable"),
            binary=self.rel(value["binary"]) if "binary" in value else None,
            sha256=value.get("sha256", "").lower() or None,
            release_url=filled["release_url"].rstrip("/"),
            channel_url=filled["channel_url"].rstrip("/"),
            airgap_images=bool(airgap),
            airgap_path=self.rel(airgap) if isinstance(airgap, str) else None,
            test_standin=bool(filled["test_standin"]),
        )

    def cluster(self, value: dict[str, Any]) -> Cluster:
        has_file, has_env = "token_file" in value, "token_env" in value
        filled = with_defaults(value, "cluster")
        kubeadm.check_keys(value, filled["kind"], self.fail)
        create = self.creation(value, bool(filled["create"]))
        if not create and has_file == has_env:
            raise self.fail("cluster", "give exactly one of token_file or token_env")
        cluster = Cluster(
            server=self.server(value["server"], filled["kind"]),
            token_file=self.rel(value["token_file"]) if has_file else self.created_token(filled),
            token_env=value.get("token_env"),
            token_in_boot=bool(filled["token_in_boot"]),
            role=filled["role"],
            node_labels=self.labels(filled["node_labels"], "cluster.node_labels"),
            node_taints=self.taints(filled["node_taints"], "cluster.node_taints"),
            kubelet_args=self.kubelet_args(filled["kubelet_args"]),
            create=create,
            servers=tuple(value.get("servers", [])),
            agent_token=bool(filled["agent_token"]),
            initialized=bool(filled["initialized"]),
            ca_hash=value.get("ca_hash"),
            ca_file=self.rel(value["ca_file"]) if "ca_file" in value else None,
            allow_unpinned=bool(filled["allow_unpinned"]),
            proxy=self.proxy(filled["proxy"]),
            registries=registries.read(
                value.get("registries"), "cluster.registries", self.rel, self.fail
            ),
            system_default_registry=registries.host(value, "system_default_registry", self.fail),
            embedded_registry=bool(value.get("embedded_registry", False)),
            **self.k3s_settings(filled, "cluster"),
            kind=filled["kind"],
            ca_cert_hashes=kubeadm.ca_cert_hashes(filled["ca_cert_hashes"], self.fail),
        )
        if cluster.kind == kubeadm.KIND:
            kubeadm.check_pinned(cluster, self.fail)
        return cluster

    def proxy(self, value: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        """install.sh's proxy variables; checked with the agent's own rule."""
        from firstboot.joinconfig import JoinConfigError, check_proxy

        pairs = {str(k): str(v) for k, v in value.items()}
        try:
            check_proxy(pairs, "proxy")
        except JoinConfigError as exc:
            raise self.fail("cluster.proxy", str(exc).split(": ", 2)[-1]) from None
        return tuple(sorted(pairs.items()))

    def creation(self, value: dict[str, Any], create: bool) -> bool:
        """`create: true` and the keys that go with it, or without it (asked of the keys given)."""
        if not create:
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

    def created_token(self, filled: dict[str, Any]) -> Path | None:
        """With create: the token agents carry (the golden image's); servers get cluster/token."""
        if not filled["create"]:
            return None
        return self.dir / "cluster" / ("agent-token" if filled["agent_token"] else "token")

    def server(self, value: str, kind: str = "k3s") -> str:
        """https://host[:port] with a real host name or address and a port in 1-65535; for
        kubeadm also host:port (its apiServerEndpoint), and the port is required."""
        form = "host:port or https://host:port" if kind == kubeadm.KIND else "https://host[:port]"
        given = value if kind != kubeadm.KIND or "://" in value else f"https://{value}"
        url = urlsplit(given.rstrip("/"))
        try:
            port = url.port
        except ValueError:
            raise self.fail("cluster.server", f"port must be 1-65535, got {shown(value)}") from None
        host = url.hostname or ""
        plain = re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host) is not None
        if url.scheme != "https" or not (plain or _is_ip(host)) or url.username or url.password:
            raise self.fail("cluster.server", f"must be {form}, got {shown(value)}")
        if port == 0 or url.path or url.query or url.fragment:
            raise self.fail(
                "cluster.server", f"must be {form} and nothing more, got {shown(value)}"
            )
        if port is None and kind == kubeadm.KIND:
            raise self.fail(
                "cluster.server",
                f"give the port (kubeadm's API server endpoint is host:port, usually"
                f" {url.netloc}:6443), got {shown(value)}",
            )
        return url.geturl()

    def kubelet_args(self, value: list[str]) -> tuple[str, ...]:
        for i, item in enumerate(value):
            if not re.match(r"^[a-z0-9][a-z0-9-]*=", item):
                raise self.fail(f"cluster.kubelet_args[{i}]", f"must be name=value, got {item!r}")
        return tuple(value)

    def user(self, value: dict[str, Any], index: int) -> User:
        filled = with_defaults(value, "users")
        keys = filled["ssh_authorized_keys"]
        for i, key in enumerate(keys):
            problem = ssh_key_problem(key)
            if problem:
                where = f"users[{index}].ssh_authorized_keys[{i}]"
                raise self.fail(where, f"must be {problem}, got {shown(key)}")
        return User(
            name=value["name"],
            ssh_authorized_keys=tuple(keys),
            sudo=bool(filled["sudo"]),
            groups=tuple(filled["groups"]),
            shell=filled["shell"],
        )

    def network(self, value: dict[str, Any]) -> Network:
        ethernet = with_defaults(value, "network")["ethernet"]
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
        filled = with_defaults(value, "output")
        return Output(
            dir=self.rel(filled["dir"]),
            formats=tuple(filled["formats"]),
            bmap=bool(filled["bmap"]),
            size=self.size(value.get("size")),
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
