"""Writes `/etc/rancher/k3s/registries.yaml` (0600) from `cluster.registries`, with the TLS
files it names copied under `/etc/rancher/k3s/registries.d/<host>/` (keys 0600).

K3s reads the file at every start, as rancher/wharfie's `Registry` (builder/config/registries.py
cites the rules); it holds registry passwords, so it is private from its first byte, and the
credentials are read here, at build, from their files (private to their owner) or variables,
never shown. `check` reads everything before the image is copied, so a missing password
file fails in a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from builder.config import environ, k3sconfig
from builder.config.model import FleetConfig
from builder.config.registries import Registries, RegistryConfig, SecretSource
from builder.disk.entries import Directory, File
from builder.disk.image import Image
from builder.layout import K3S_ETC, RANCHER_ETC
from builder.plan import Plan
from builder.util.errors import UserError
from builder.util.private import read_input

PATH = f"{K3S_ETC}/registries.yaml"
CERTS = f"{K3S_ETC}/registries.d"
TLS_FILES = {"ca_file": ("ca.crt", 0o644), "cert_file": ("client.crt", 0o644),
             "key_file": ("client.key", 0o600)}  # fmt: skip


def check(image: Image, plan: Plan) -> None:
    """Every credential and TLS file readable, and the server flags on a fleet with servers,
    before the copy."""
    with_server_flags({}, plan.config)
    registries = plan.config.cluster.registries
    if registries is not None:
        render(registries, str(plan.config.source))


def with_server_flags(
    by_role: dict[str, dict[str, Any]], config: FleetConfig
) -> dict[str, dict[str, Any]]:
    """The join config's K3s flags by role, with system-default-registry and embedded-registry
    for servers (both are `k3s server` flags only: pkg/cli/cmds/server.go)."""
    cluster = config.cluster
    flags: dict[str, Any] = {}
    if cluster.system_default_registry:
        flags["system-default-registry"] = cluster.system_default_registry
    if cluster.embedded_registry:
        flags["embedded-registry"] = True
    if not flags:
        return by_role
    if "server" not in k3sconfig.fleet_roles(config):
        key = "system_default_registry" if cluster.system_default_registry else "embedded_registry"
        raise UserError(
            f"{config.source}: cluster.{key}: a K3s server setting, and this fleet runs no server"
            " (cluster.servers, cluster.role: server or devices[].role: server)"
        )
    for name in flags:
        if name in by_role.get("server", {}):
            raise UserError(
                f"{config.source}: cluster.k3s_config.{name}: set it once, as cluster.{name.replace('-', '_')}"
            )
    return {**by_role, "server": {**by_role.get("server", {}), **flags}}


def apply(image: Image, plan: Plan) -> None:
    registries = plan.config.cluster.registries
    if registries is None:
        return
    text, files = render(registries, str(plan.config.source))
    image.root.stage(Directory(RANCHER_ETC, 0o755))  # as builder/fleet/servers.py stages them
    image.root.stage(Directory(K3S_ETC, 0o755))
    if files:
        image.root.stage(Directory(CERTS, 0o700))
    for directory in sorted({str(Path(path).parent) for path in files}):
        image.root.stage(Directory(directory, 0o700))
    for path, (data, mode) in sorted(files.items()):
        image.root.stage(File(path, mode, data=data))
    image.root.stage(File(PATH, 0o600, data=text))


def render(registries: Registries, where: str) -> tuple[bytes, dict[str, tuple[bytes, int]]]:
    """(registries.yaml, {device path: (bytes, mode)} of the TLS files); one-line errors."""
    document: dict[str, Any] = {}
    if registries.mirrors:
        document["mirrors"] = {
            m.name: {
                "endpoint": list(m.endpoints),
                **({"rewrite": dict(m.rewrites)} if m.rewrites else {}),
            }
            for m in registries.mirrors
        }
    files: dict[str, tuple[bytes, int]] = {}
    configs = {}
    for config in registries.configs:
        configs[config.host] = _config(
            config, files, f"{where}: cluster.registries.configs.{config.host}"
        )
    if configs:
        document["configs"] = configs
    text = yaml.safe_dump(document, default_flow_style=False, sort_keys=False)
    return text.encode(), files


def _config(
    config: RegistryConfig, files: dict[str, tuple[bytes, int]], where: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    auth: dict[str, str] = {"username": config.username} if config.username else {}
    for source in config.secrets:
        auth[source.field] = _secret(source, f"{where}.auth")
    if auth:
        out["auth"] = auth
    tls: dict[str, Any] = {}
    folder = f"{CERTS}/{config.host.replace(':', '_').strip('[]')}"
    for key, (name, mode) in TLS_FILES.items():
        host_path = getattr(config, key)
        if host_path is not None:
            files[f"{folder}/{name}"] = (
                _read(host_path, f"{where}.tls.{key}", mode == 0o600),
                mode,
            )
            tls[key] = f"{folder}/{name}"
    if config.insecure_skip_verify:
        tls["insecure_skip_verify"] = True
    if tls:
        out["tls"] = tls
    return out


def _secret(source: SecretSource, where: str) -> str:
    """A credential, one line, never shown in a message."""
    if source.file is not None:
        key = f"{where}.{source.field}_file"
        text = _read(source.file, key, private=True).decode("utf-8", "replace")
    else:
        key = f"{where}.{source.field}_env"
        text = environ.take(source.env or "")
        if not text.strip():
            raise UserError(f"{key}: environment variable {source.env} is not set or empty")
    value = text.strip()
    if not value.isprintable():
        raise UserError(f"{key}: the {source.field} holds a second line or a control character")
    return value


def _read(path: Path, key: str, private: bool) -> bytes:
    return read_input(path, f"{key}: ", private=private)
