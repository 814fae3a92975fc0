"""`cluster.k3s_config` and the address settings: K3s flags for config.yaml, checked at build.

Fleet-wide keys (`cluster.k3s_config`, `cluster.node_ip`, ...) go to every device whose role
has that flag; a device's own keys (`devices[].k3s_config`, `devices[].node_ip`, ...) win
over them. They travel as the agent's other join settings do: fleet-wide in join.json (one
mapping per role, since one golden image may become either), per device in device.json;
the agent appends them to the config.yaml it writes (firstboot/k3sfiles.py).

| rule | source |
|---|---|
| a key must be a flag of the device's role (`k3s agent` or `k3s server`); fleet-wide, of a role the fleet has | builder/config/k3sflags.py (agent.go, server.go) |
| a flag pifleet writes is refused, naming the pifleet key | firstboot/k3sfiles.py:config_yaml |
| a value (or list item) with a password (a URL's `user:password@`, a DSN's `password=`) is refused: join.json is 0644 | pifleet's rule for the token |
| node_ip, node_external_ip: one address, or a dual-stack pair (one IPv4, one IPv6), as a list or comma-separated | k8s staging/src/k8s.io/component-helpers/node/util/ips.go:ParseNodeIPArgument; k3s agent.go (node-ip, node-external-ip) |
| node_ip, node_external_ip: not loopback, multicast, link-local or all zeros; no address has a zone (`fe80::1%eth0`) | k8s pkg/kubelet/kubelet_node_status.go:validateNodeIP; Go net.ParseIP |
| flannel_iface: a network interface name | k3s agent.go (flannel-iface); Linux dev_valid_name |
| advertise_address: one address, servers only (`k3s server` flag) | k3s server.go (advertise-address) |
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from builder.config import k3sflags
from builder.config.model import Device, FleetConfig, K3sValue
from builder.config.values import interface_problem
from builder.util.errors import UserError
from builder.util.yamlfile import shown

Fail = Callable[[str, str], UserError]
Settings = tuple[tuple[str, K3sValue], ...]


def read(value: dict[str, Any], key: str, fail: Fail) -> Settings:
    """The mapping at `key` checked against K3s's flags, whatever the role (see `check`)."""
    out: list[tuple[str, K3sValue]] = []
    for name, item in value.items():
        where = f"{key}.{name}"
        if not isinstance(name, str):
            raise fail(
                where, "not a K3s flag (a flag's name is text, as `k3s agent --help` spells it)"
            )
        if name not in k3sflags.AGENT and name not in k3sflags.SERVER:
            near = k3sflags.nearest(name)
            if near in k3sflags.OWNED:
                near = f"{near}, which pifleet writes itself (use {k3sflags.OWNED[near]})"
            hint = (
                f"; did you mean {near}?"
                if near
                else " (see `k3s agent --help`, `k3s server --help`)"
            )
            raise fail(where, f"not a K3s flag{hint}")
        if name in k3sflags.OWNED:
            raise fail(where, f"pifleet writes {name} itself; use {k3sflags.OWNED[name]}")
        if name in k3sflags.SECRET or _has_password(item):
            instead = k3sflags.SECRET.get(name) or (
                "a DSN without a password"
                if name == "datastore-endpoint"
                else "a value without a password (a file K3s reads, as etcd-s3-config-secret)"
            )
            raise fail(
                where,
                f"its value is a credential, which would be in /etc/pifleet/join.json (0644) and"
                f" the image's outputs; use {instead}",
            )
        kind = k3sflags.SERVER.get(name) or k3sflags.AGENT[name]
        out.append((name, _typed(item, kind, where, fail)))
    return tuple(out)


# A URL's user:password@ anywhere in a value (etcd-s3-proxy, etcd-s3-endpoint, a DSN, an
# `--x-arg=https://u:pw@h`), or a key=value DSN's password (PostgreSQL allows spaces around =).
_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s]*:[^/?#@\s]+@")
_PASSWORD = re.compile(r"password\s*=", re.IGNORECASE)


def _has_password(value: object) -> bool:
    """Whether a flag's value (every item of a list) carries a password."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        text = str(item)
        if _USERINFO.search(text) or _PASSWORD.search(text):
            return True
        try:
            if urlsplit(text).password:
                return True
        except ValueError:
            continue
    return False


def _typed(value: object, kind: k3sflags.Kind, where: str, fail: Fail) -> K3sValue:
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise fail(where, f"must be true or false, got {shown(value)}")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail(where, f"must be an integer, got {shown(value)}")
    if kind == "string":
        if isinstance(value, str):
            return value
        raise fail(
            where, f"must be a string (quote it: YAML reads 0644 as a number), got {shown(value)}"
        )
    items = [value] if isinstance(value, str) else value
    if isinstance(items, list) and all(isinstance(v, str) for v in items):
        return tuple(items)
    raise fail(where, f"must be a string or a list of strings, got {shown(value)}")


def addresses(value: str | list[str] | None, key: str, fail: Fail) -> tuple[str, ...]:
    """node-ip / node-external-ip: one address or a dual-stack pair."""
    if value is None:
        return ()
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    try:
        ips = [ipaddress.ip_address(v) for v in items]
    except ValueError:
        raise fail(key, f"must be IP addresses (comma-separated), got {shown(value)}") from None
    if len(ips) > 2 or (len(ips) == 2 and ips[0].version == ips[1].version):
        raise fail(key, f"must be one address or one IPv4 and one IPv6, got {shown(value)}")
    for ip in ips:
        why = _scoped(ip) or _not_a_node_ip(ip)
        if why:
            raise fail(key, f"{ip}: {why}")
    return tuple(str(ip) for ip in ips)


def _scoped(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return "an address with a zone (%...), which Go's net.ParseIP in K3s does not read"
    return None


def _not_a_node_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The kubelet's validateNodeIP (pkg/kubelet/kubelet_node_status.go) refuses these."""
    for bad, what in (
        (ip.is_loopback, "a loopback"), (ip.is_multicast, "a multicast"),
        (ip.is_link_local, "a link-local"), (ip.is_unspecified, "an all-zeros"),
    ):  # fmt: skip
        if bad:
            return f"{what} address, which the kubelet refuses as a node address"
    return None


def address(value: str | None, key: str, fail: Fail) -> str | None:
    if value is None:
        return None
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise fail(key, f"must be an IP address, got {shown(value)}") from None
    why = _scoped(ip)
    if why:
        raise fail(key, f"{ip}: {why}")
    return str(ip)


def interface(value: str | None, key: str, fail: Fail) -> str | None:
    problem = interface_problem(value) if value is not None else None
    if problem:
        raise fail(key, f"must be {problem}, got {shown(value)}")
    return value


def _addressing(owner: Any) -> Settings:
    """node_ip & co. of a Cluster or Device as config.yaml flags."""
    pairs: list[tuple[str, K3sValue]] = []
    if owner.node_ip:
        pairs.append(("node-ip", owner.node_ip))
    if owner.node_external_ip:
        pairs.append(("node-external-ip", owner.node_external_ip))
    if owner.flannel_iface:
        pairs.append(("flannel-iface", owner.flannel_iface))
    if owner.advertise_address:
        pairs.append(("advertise-address", owner.advertise_address))
    return tuple(pairs)


def fleet_roles(config: FleetConfig) -> set[str]:
    """The K3s roles this fleet's images run (with create, the golden image is an agent's)."""
    if not config.cluster.create:
        return {config.cluster.role}
    return {"agent", *(config.cluster.role_of(d.hostname) for d in config.devices)}


def check(config: FleetConfig) -> None:
    """Every key fits the roles it goes to (run once devices_file rows are in)."""
    cluster = config.cluster
    fleet = (*cluster.k3s_config, *_addressing(cluster))
    roles = fleet_roles(config)
    for name, _ in fleet:
        key = _source_key("cluster", name, cluster.k3s_config)
        if not any(name in k3sflags.ROLES[r] for r in roles):
            (other,) = {"agent", "server"} - roles
            raise UserError(
                f"{config.where(key)}: a `k3s {other}` flag only, and this fleet's devices run"
                f" `k3s {' and '.join(sorted(roles))}`"
            )
        _check_create_owned(config, key, name)
    for i, device in enumerate(config.devices):
        role = cluster.role_of(device.hostname)
        for name, _ in (*device.k3s_config, *_addressing(device)):
            key = _source_key(f"devices[{i}]", name, device.k3s_config)
            if name not in k3sflags.ROLES[role]:
                near = k3sflags.nearest(name, role)
                hint = f" (nearest: {near})" if near else ""
                raise UserError(
                    f"{config.where(key)}: not a `k3s {role}` flag, and {device.hostname} is"
                    f" {'an agent' if role == 'agent' else 'a server'}{hint}"
                )
            _check_create_owned(config, key, name)


def _source_key(prefix: str, name: str, mapping: Settings) -> str:
    if any(n == name for n, _ in mapping):
        return f"{prefix}.k3s_config.{name}"
    return f"{prefix}.{name.replace('-', '_')}"


def _check_create_owned(config: FleetConfig, key: str, name: str) -> None:
    if config.cluster.create and name in k3sflags.CREATE_OWNED:
        raise UserError(
            f"{config.where(key)}: with cluster.create pifleet writes {name} itself; use"
            f" {k3sflags.CREATE_OWNED[name]}"
        )


def for_role(config: FleetConfig, role: str) -> dict[str, Any]:
    """The fleet-wide flags for devices of `role` (join.json), as JSON values."""
    pairs = (*config.cluster.k3s_config, *_addressing(config.cluster))
    return {n: _json(v) for n, v in pairs if n in k3sflags.ROLES[role]}


def for_device(device: Device) -> dict[str, Any]:
    """The device's own flags (device.json), as JSON values; they win over the fleet's."""
    return {n: _json(v) for n, v in (*device.k3s_config, *_addressing(device))}


def _json(value: K3sValue) -> Any:
    return list(value) if isinstance(value, tuple) else value
