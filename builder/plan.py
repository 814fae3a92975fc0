"""The build plan: a validated config resolved into concrete, verified inputs.

The CLI parses, the config validates, the plan resolves (files found, sha256
checked, token read), steps apply, output writes. Nothing after this module
looks at the YAML again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from builder.config import advice
from builder.config.labels import fleet_labels
from builder.config.model import FleetConfig
from builder.config.token import read_token
from builder.detect.flavor import Flavor
from builder.sources import obtain as sources
from builder.sources.obtain import Input
from builder.util.batch import same_file
from builder.util.errors import UserError
from builder.util.private import make_private_dirs
from builder.util.secret import Secret

log = logging.getLogger("pifleet.plan")


@dataclass(frozen=True)
class Plan:
    config: FleetConfig
    base: Input
    k3s: Input | None  # None for a kubeadm fleet
    k3s_standin: bool
    airgap: Input | None
    token: Secret
    output_dir: Path
    # Filled in once the base is open (see `for_image`): the OS detected in it.
    detected: Flavor | None = None
    epoch: int = 0
    kubernetes: tuple[Input, ...] = ()  # a kubeadm fleet's kubeadm, kubelet, kubectl

    @property
    def image_path(self) -> Path:
        return self.output_dir / f"{self.config.name}.img"

    def for_image(self, flavor: Flavor, epoch: int) -> Plan:
        return replace(self, detected=flavor, epoch=epoch)

    @property
    def flavor(self) -> Flavor:
        """The OS in the base image (with the seed format to write)."""
        if self.detected is None:
            raise RuntimeError("plan used before the base image was inspected")
        return self.detected


def resolve(
    config: FleetConfig,
    *,
    base_override: Path | None = None,
    k3s_override: Path | None = None,
    output_dir: Path | None = None,
) -> Plan:
    """Find, fetch and verify every input named by `config` (CLI overrides win)."""
    where = str(config.source)
    require_buildable(config)
    token = read_token(config.cluster, where)
    if base_override is not None:
        base = sources.local_base(base_override, None, where="--base")
    else:
        base = sources.obtain_base(config.base, config.arch, where=f"{where}: base")
    k3s: Input | None = None
    airgap, kubernetes = None, sources.obtain_kubernetes(config.kubernetes, config.arch, where)
    if k3s_override is not None and config.kubernetes is not None:
        raise UserError(f"--k3s-binary: {where}: the fleet is cluster.kind: kubeadm (no K3s)")
    if k3s_override is not None:
        k3s = sources.local_k3s(k3s_override, None, where="--k3s-binary")
    elif config.kubernetes is None:
        k3s = sources.obtain_k3s(config.k3s, config.arch, where=f"{where}: k3s")
    if k3s is not None:
        airgap = sources.obtain_airgap(config.k3s, config.arch, k3s, where=f"{where}: k3s")
    out = (output_dir or config.output.dir).resolve()
    config = with_fleet_labels(config)
    _check_output_dir(out, base.path, config.name)
    advice.warn(config)  # once every input is there: a failed build shows its error alone
    return Plan(
        config=config,
        base=base,
        k3s=k3s,
        k3s_standin=config.k3s.test_standin,
        airgap=airgap,
        token=token,
        output_dir=out,
        kubernetes=kubernetes,
    )


def require_buildable(config: FleetConfig) -> None:
    """Called by `resolve` (build, demo), personalize and flash before anything is written or
    fetched: a kubeadm fleet's token is read and checked first (its form is kubeadm's)."""
    if config.cluster.kind == "kubeadm":
        read_token(config.cluster, str(config.source))


def _check_output_dir(out: Path, base: Path, name: str) -> None:
    target = out / f"{name}.img"
    if same_file(target, base):
        raise UserError(
            f"{target}: the output would overwrite the base image; choose another output.dir"
        )
    try:
        make_private_dirs(out)  # 0700 whatever the umask: it will hold device identities
    except OSError as exc:
        raise UserError(f"{out}: cannot create the output directory: {exc.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"{out}: the output directory is not writable")


def input_paths(config: FleetConfig, base: Path | None = None) -> dict[str, Path]:
    """The files `config` names as inputs (what -> path): no output may be written onto one."""
    named = {
        "the fleet file": config.source,
        "the base image": base or config.base.path,
        "the token file": config.cluster.token_file,
        "the CA file": config.cluster.ca_file,
        "the K3s binary": config.k3s.binary,
        "the air-gap images": config.k3s.airgap_path,
        "the devices file": config.devices_file,
    }
    if base is not None and config.base.path is not None:
        named["the fleet file's base image"] = config.base.path
    return {what: path for what, path in named.items() if path is not None}


def source_date_epoch() -> int | None:
    """SOURCE_DATE_EPOCH from the environment, validated."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise UserError(f"SOURCE_DATE_EPOCH must be a number of seconds, got {raw!r}")
    return int(raw)


def with_fleet_labels(config: FleetConfig) -> FleetConfig:
    """`config` with pifleet's own node labels after the user's (see `builder.config.labels`)."""
    labels = tuple(x for x in fleet_labels(config) if x not in config.cluster.node_labels)
    return replace(
        config, cluster=replace(config.cluster, node_labels=config.cluster.node_labels + labels)
    )
