"""Fleet YAML -> typed, validated `FleetConfig` (frozen dataclasses), read once.

Structure, types, defaults and unknown keys are checked against
`config/schema.json` (the same file editors use); meaning (labels, taints,
addresses, unique host names, mutually exclusive keys) is checked here. Every
error is one line: `<file>: <key.path>: <what was expected>, got <value>`.
Files named by the config (token, base, binary) are checked when the build plan
resolves them, not here.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from builder.config import environ, k3sconfig, kubeadm
from builder.config.inventory import merged
from builder.config.model import FleetConfig
from builder.config.reader import FleetReader
from builder.config.schema import validate
from builder.util.errors import UserError
from builder.util.yamlfile import read_yaml


def load(path: Path) -> FleetConfig:
    """Read, validate and type the fleet file at `path`."""
    raw = read_yaml(path, what="fleet config")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of settings at the top level")
    validate(raw, path)
    config = FleetReader(path, raw).build()
    if config.devices_file is not None:
        config = replace(config, devices=merged(config))
        if config.cluster.kind == kubeadm.KIND:
            kubeadm.check_merged(config.devices, str(config.source))
    _check_servers(config)
    k3sconfig.check(config)
    _take_secrets(config)
    return config


def _take_secrets(config: FleetConfig) -> None:
    """The token's and every Wi-Fi passphrase's variable leave the environment now, before any
    child runs (their values are kept in `environ` for when they are read)."""
    wifis = [config.network.wifi, *(d.wifi for d in config.devices)]
    names = [w.password_env for w in wifis if w is not None and w.password_env]
    for name in [*names, *([config.cluster.token_env] if config.cluster.token_env else [])]:
        environ.take(name)


def _check_servers(config: FleetConfig) -> None:
    """Every server of a cluster pifleet creates is one of the fleet's devices, and a device's
    own `role` agrees with cluster.servers."""
    names = {d.hostname for d in config.devices}
    for i, server in enumerate(config.cluster.servers):
        if server not in names:
            raise UserError(
                f"{config.where(f'cluster.servers[{i}]')}: {server!r} is not among the devices"
                " (devices: or devices_file:)"
            )
    if config.cluster.initialized and len(config.cluster.servers) == 1:
        raise UserError(
            f"{config.where('cluster.initialized')}: {config.cluster.servers[0]} is the only"
            " server, so a re-flashed server has no cluster to join back (it starts a new one)"
        )
    for i, device in enumerate(config.devices):
        if device.role is None:
            continue
        where = config.where(f"devices[{i}].role")
        if not config.cluster.create:
            raise UserError(f"{where}: only meaningful with cluster.create: true")
        if device.role != config.cluster.role_of(device.hostname):
            listed = "is not" if device.role == "server" else "is"
            raise UserError(
                f"{where}: {device.role!r} conflicts with cluster.servers ({device.hostname}"
                f" {listed} listed there); servers are exactly the devices in cluster.servers"
            )
