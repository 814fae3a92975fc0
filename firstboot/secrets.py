"""The device's secrets, one table: what each file holds, where it is first, what custody does
with it, and what cleanup deletes once the device has joined.

| file (boot: on the boot partition) | secret                 | custody (firstboot/custody.py)                          | cleanup |
|------------------------------------|------------------------|---------------------------------------------------------|---------|
| boot: user-data                    | SSH host private key   | kept in /var/lib/cloud/seed/nocloud/user-data, the FAT keeps user-data without it | no |
| boot: network-config               | Wi-Fi PSK              | kept in /var/lib/cloud/seed/nocloud/network-config, the FAT keeps it without `password:` | no |
| boot: firstrun.sh                  | PSK, SSH host key      | deleted once it has run (not in /proc/cmdline)           | -       |
| boot: pifleet/token                | join token             | moved to /etc/pifleet/token                              | yes     |
| boot: pifleet/node-password        | K3s node password      | moved to /etc/pifleet/node-password                      | yes     |
| /etc/pifleet/node-password         | K3s node password      | (custody's copy)                                         | yes     |
| /etc/pifleet/token                 | join token             | (the golden image's, or custody's copy); the join config's token_file | yes |
| /etc/rancher/k3s/join-token        | the token, K10 form    | (configure writes it for K3s)                            | no      |
| /etc/rancher/node/password         | K3s node password      | (K3s's own; configure writes a pre-seeded one)           | no      |
| /etc/rancher/k3s/agent-token       | a server's agent token | (the image's, servers only)                              | no      |

The paths of the builder-agent contract live in firstboot/joinconfig.py, K3s's own files in
firstboot/k3sfiles.py; this table names them, and the agent, custody and collect ask it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional

from firstboot import joinconfig, k3sfiles

SEED_DIR = "/var/lib/cloud/seed/nocloud"  # cloud-init's own seed directory (custody's copies)
BOOT_SUB = joinconfig.BOOT_SUBDIR + "/"

# What custody does with a file on the boot partition.
CLEAN = "clean"  # keep a copy (0600), leave the file on the FAT without its secret
MOVE = "move"  # copy it (0600), zero its clusters, delete it
RAN = "ran"  # zero and delete it once it has run (firstrun.sh)


@dataclass(frozen=True)
class Secret:
    what: str  # in words, for people
    path: str  # where it is; relative to the boot partition's mount when `boot`
    boot: bool = False
    custody: str = ""  # CLEAN, MOVE, RAN, or "" (stays)
    kept: Optional[str] = None  # where custody keeps it, in the root filesystem (0600)
    cleanup: bool = False  # deleted once the device has joined
    whole: bool = False  # the file's whole text is the secret (the redactor masks it verbatim)

    def at(self, boot_dir: str) -> str:
        """Its path on the device whose boot partition is mounted at `boot_dir`."""
        return boot_dir.rstrip("/") + "/" + self.path if self.boot else self.path

    def places(self, boot_dir: str) -> List[str]:
        """Where it may be: where it is first, and custody's copy."""
        return [self.at(boot_dir)] + ([self.kept] if self.kept else [])


USER_DATA = Secret("SSH host private key", "user-data", True, CLEAN, SEED_DIR + "/user-data")
NETWORK_CONFIG = Secret("Wi-Fi PSK", "network-config", True, CLEAN, SEED_DIR + "/network-config")
FIRSTRUN = Secret("Wi-Fi PSK, SSH host key", "firstrun.sh", True, RAN)
NODE_PASSWORD_COPY = Secret(
    "K3s node password (custody's copy)", "/etc/pifleet/node-password", cleanup=True, whole=True
)
FLEET_TOKEN = Secret(
    "join token (the image's, or custody's copy; the join config's token_file)",
    joinconfig.FLEET_TOKEN_PATH,
    cleanup=True,
    whole=True,
)
BOOT_TOKEN = Secret(
    "join token (injected at flash or personalize time)",
    BOOT_SUB + joinconfig.BOOT_TOKEN_FILE,
    True,
    MOVE,
    FLEET_TOKEN.path,
    cleanup=True,
    whole=True,
)
BOOT_NODE_PASSWORD = Secret(
    "K3s node password (pre-seeded)",
    BOOT_SUB + joinconfig.BOOT_NODE_PASSWORD_FILE,
    True,
    MOVE,
    NODE_PASSWORD_COPY.path,
    cleanup=True,
    whole=True,
)
K3S_TOKEN = Secret("the join token in K3s's K10 form", k3sfiles.TOKEN_PATH, whole=True)
K3S_NODE_PASSWORD = Secret("K3s node password", k3sfiles.NODE_PASSWORD_PATH, whole=True)
AGENT_TOKEN = Secret("a server's agent token", k3sfiles.AGENT_TOKEN_PATH, whole=True)
KUBEADM_CONFIG = Secret(
    "kubeadm's JoinConfiguration (holds the join token)",
    "/etc/pifleet/kubeadm-join.json",
    cleanup=True,
)

# Custody works in this order; cleanup deletes in this order.
SECRETS = (
    USER_DATA,
    NETWORK_CONFIG,
    FIRSTRUN,
    BOOT_TOKEN,
    BOOT_NODE_PASSWORD,
    NODE_PASSWORD_COPY,
    FLEET_TOKEN,
    K3S_TOKEN,
    K3S_NODE_PASSWORD,
    AGENT_TOKEN,
    KUBEADM_CONFIG,
)
CLEANUP = tuple(s for s in SECRETS if s.cleanup)
VALUES = tuple(s for s in SECRETS if s.whole)
CLEANED = tuple(s for s in SECRETS if s.custody == CLEAN)
# Where the agent reads these, the boot partition's first.
JOIN_TOKEN = (BOOT_TOKEN, FLEET_TOKEN)
PRESEEDED_NODE_PASSWORD = (BOOT_NODE_PASSWORD, NODE_PASSWORD_COPY)


def paths(
    secrets: Iterable[Secret], boot_dir: str, token_file: str = FLEET_TOKEN.path
) -> List[str]:
    """Where each of `secrets` is on a device: under the boot partition's mount `boot_dir`; the
    fleet token at the join config's `token_file`. Each path once, in order."""
    found: List[str] = []
    for secret in secrets:
        path = token_file if secret is FLEET_TOKEN else secret.at(boot_dir)
        if path not in found:
            found.append(path)
    return found
