"""Writes the agent's join config and the token.

The token goes to a 0600 root-only file in the root filesystem, or, with
`cluster.token_in_boot`, to the boot partition (flash-time injection; the
device deletes it once joined).
"""

from __future__ import annotations

from typing import Any

from builder.config import k3sconfig
from builder.config.model import FleetConfig
from builder.disk.entries import Directory, File
from builder.disk.image import Image
from builder.layout import K3S_PATH, PIFLEET_ETC
from builder.plan import Plan
from builder.steps import registries
from firstboot import joinconfig

BOOT_TOKEN = f"/{joinconfig.BOOT_SUBDIR}/{joinconfig.BOOT_TOKEN_FILE}"


def apply(image: Image, plan: Plan) -> None:
    config = join_config(plan)
    image.root.stage(Directory(PIFLEET_ETC, 0o755))
    image.root.stage(
        File(joinconfig.JOIN_CONFIG_PATH, 0o644, data=joinconfig.dump_join_config(config))
    )
    token = (plan.token.reveal() + "\n").encode()
    if plan.config.cluster.token_in_boot:
        image.boot.stage(BOOT_TOKEN, token)
    else:
        image.root.stage(File(joinconfig.FLEET_TOKEN_PATH, 0o600, data=token))


def join_config(plan: Plan) -> joinconfig.JoinConfig:
    cluster = plan.config.cluster
    return joinconfig.JoinConfig(
        server=cluster.server,
        role=cluster.role,
        token_file=joinconfig.FLEET_TOKEN_PATH,
        boot_dir=plan.flavor.boot_mount,
        hostname_pattern=plan.config.hostname_pattern,
        node_labels=list(cluster.node_labels),
        node_taints=list(cluster.node_taints),
        kubelet_args=list(cluster.kubelet_args),
        k3s_binary=K3S_PATH,
        build_time=plan.epoch,
        backoff_cap=plan.config.agent.backoff_cap,
        clock_sync_timeout=plan.config.agent.clock_sync_timeout,
        recheck_interval=plan.config.agent.recheck_interval,
        start_timeout=plan.config.agent.start_timeout,
        proxy=dict(cluster.proxy),
        k3s_config=registries.with_server_flags(k3s_config_by_role(plan.config), plan.config),
        kind=cluster.kind,
        ca_cert_hashes=list(cluster.ca_cert_hashes),
        allow_unpinned=cluster.allow_unpinned if cluster.kind == "kubeadm" else False,
    )


def k3s_config_by_role(config: FleetConfig) -> dict[str, dict[str, Any]]:
    """The fleet-wide K3s flags for each role the fleet runs (see builder.config.k3sconfig)."""
    by_role = {r: k3sconfig.for_role(config, r) for r in sorted(k3sconfig.fleet_roles(config))}
    return {role: flags for role, flags in by_role.items() if flags}
