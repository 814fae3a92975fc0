"""The typed fleet config: frozen dataclasses, read once by `builder.config.fleet.load`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from builder.config.registries import Registries

# Defaults come from config/schema.json (the reader fills them in). The few dataclass defaults
# below let tests build a value by hand; tests/test_config.py checks that they agree.

Arch = Literal["arm64", "armhf"]
K3sValue = bool | int | str | tuple[str, ...]  # a K3s flag's value in config.yaml
ClusterKind = Literal["k3s", "kubeadm"]


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
    release_url: str = "https://github.com/k3s-io/k3s/releases/download"
    channel_url: str = "https://update.k3s.io/v1-release/channels"
    airgap_images: bool = False
    airgap_path: Path | None = None
    test_standin: bool = False


@dataclass(frozen=True)
class KubernetesBinaries:
    """A kubeadm fleet's binaries: a release to download (`version`), or three local files;
    each is checked as an ELF for the fleet's arch."""

    kubeadm: Path | None = None
    kubelet: Path | None = None
    kubectl: Path | None = None
    sha256: tuple[tuple[str, str], ...] = ()  # (binary name, expected sha256), lowercase
    test_standin: bool = False
    version: str | None = None
    release_url: str = "https://dl.k8s.io/release"

    def files(self) -> tuple[tuple[str, Path], ...]:
        named = (("kubeadm", self.kubeadm), ("kubelet", self.kubelet), ("kubectl", self.kubectl))
        return tuple((name, path) for name, path in named if path is not None)


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
    create: bool = False  # pifleet makes the CA set and token (`pifleet cluster init`)
    servers: tuple[str, ...] = ()  # with create: devices running `k3s server`, first initialises
    agent_token: bool = True  # with create: agents join with a separate agent-only token
    initialized: bool = False  # with create: the cluster runs already; every server joins it
    ca_hash: str | None = None  # pins an unpinned token: the hash K3s computes for /cacerts
    ca_file: Path | None = None  # pins an unpinned token: the server's server-ca.crt
    allow_unpinned: bool = False  # join with a token that pins nothing (the operator's choice)
    proxy: tuple[tuple[str, str], ...] = ()  # HTTP_PROXY & co. for K3s's env file
    k3s_config: tuple[tuple[str, K3sValue], ...] = ()  # more K3s flags (builder.config.k3sconfig)
    node_ip: tuple[str, ...] = ()  # K3s node-ip (one address or a dual-stack pair)
    node_external_ip: tuple[str, ...] = ()
    flannel_iface: str | None = None
    advertise_address: str | None = None  # servers only
    registries: Registries | None = None  # registries.yaml (builder.config.registries)
    system_default_registry: str | None = None  # servers: K3s system-default-registry
    embedded_registry: bool = False  # servers: K3s embedded-registry (Spegel)
    kind: ClusterKind = "k3s"  # what the devices join: K3s, or upstream Kubernetes via kubeadm
    ca_cert_hashes: tuple[str, ...] = ()  # kubeadm: CA pins, "sha256:<hex>" over the SPKI

    @property
    def api_server_endpoint(self) -> str:
        """`host:port` of `server` (kubeadm's JoinConfiguration apiServerEndpoint)."""
        return urlsplit(self.server).netloc

    def role_of(self, hostname: str) -> Literal["agent", "server"]:
        """The K3s role of one device: from `servers` when pifleet creates the cluster."""
        if self.create:
            return "server" if hostname in self.servers else "agent"
        return self.role

    def initialises(self, hostname: str) -> bool:
        """True for the one server that runs `cluster-init` (the first, until `initialized`)."""
        return self.create and not self.initialized and self.servers[:1] == (hostname,)


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
    role: Literal["agent", "server"] | None = None  # with cluster.create: agrees with servers
    k3s_config: tuple[tuple[str, K3sValue], ...] = ()  # wins over cluster.k3s_config
    node_ip: tuple[str, ...] = ()
    node_external_ip: tuple[str, ...] = ()
    flannel_iface: str | None = None
    advertise_address: str | None = None
    board: str | None = None  # overrides hardware.board


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
    recheck_interval: float  # re-check after a final verdict (wrong token, CA mismatch)
    start_timeout: float  # K3s not joined by then: `failed state=start` + its log


@dataclass(frozen=True)
class SeedSettings:
    format: str | None = None  # None: detected from the image (see builder.detect.osformat)
    keyboard: str | None = None  # XKB layout such as "de"


@dataclass(frozen=True)
class Hardware:
    i2c: bool = False
    spi: bool = False
    serial: bool = False
    onewire: bool = False
    usb_gadget: bool = False
    pi5_4k_pages: bool = False
    wifi_country: str | None = None  # regulatory domain without a Wi-Fi network
    board: str | None = None  # the fleet's board (builder.config.advice.BOARD_RAM); checks only


@dataclass(frozen=True)
class ConfigTxtLine:
    section: str  # "all", "pi4", "pi5", ... (the [filter] it belongs under)
    line: str  # "dtparam=i2c_arm=on", "enable_uart=1", ...


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
    seed: SeedSettings = SeedSettings()
    hardware: Hardware = Hardware()
    config_txt: tuple[ConfigTxtLine, ...] = ()
    kubernetes: KubernetesBinaries | None = None  # cluster.kind kubeadm only

    def where(self, key: str) -> str:
        """Prefix for an error about `key` of this config: '<file>: <key>'."""
        return f"{self.source}: {key}"
