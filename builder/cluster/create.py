"""`pifleet cluster init` and `pifleet cluster show`: a K3s cluster made before any Pi boots.

`init` writes, beside the fleet file, a `cluster/` folder (0700) that appears
whole or not at all:

  cluster/tls/...      the custom CA layout K3s reads from server/tls/ (see `ca`); keys 0600
  cluster/token        K10<ca hash>::server:<password>, the server token (0600)
  cluster/agent-token  K10<ca hash>::node:<password>, with cluster.agent_token (0600)

The CA hash is computed from the exact bytes K3s will serve at `/cacerts`
(`server-ca.crt`), so every agent and joining server is pinned from its first
boot. `show` prints the hash and each CA's expiry; it never prints a secret.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
from pathlib import Path

from cryptography import x509

from builder.cluster.ca import LEAF_CAS, TlsFile, generate
from builder.cluster.cahash import k3s_ca_hash
from builder.cluster.check import check_layout, check_token
from builder.config.fleet import load
from builder.config.model import FleetConfig
from builder.util.errors import UserError

CLUSTER_DIR = "cluster"


def cluster_dir(config: FleetConfig) -> Path:
    return config.source.resolve().parent / CLUSTER_DIR


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from its first byte; never follow or reuse what is there."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _token(ca_hash: str, user: str) -> bytes:
    return f"K10{ca_hash}::{user}:{secrets.token_hex(16)}\n".encode()


def create(config: FleetConfig) -> str:
    """Make `cluster/` for `config`; the K10 CA hash. Refuses to touch an existing cluster."""
    if not config.cluster.create:
        raise UserError(f"{config.where('cluster.create')}: must be true to create a cluster")
    final = cluster_dir(config)
    if final.exists() or final.is_symlink():
        raise UserError(
            f"{final}: a cluster already exists here; pifleet never overwrites one"
            " (move it away to start a new cluster: every device built for it stops joining)"
        )
    files = generate()
    ca_hash = k3s_ca_hash(next(f.data for f in files if f.path == "server-ca.crt"))
    tmp = final.with_name(f".{CLUSTER_DIR}.pifleet-{os.getpid()}.tmp")
    os.mkdir(tmp, 0o700)
    try:
        for f in files:
            _write_new(tmp / "tls" / f.path, f.data, 0o600 if f.secret else 0o644)
        _write_new(tmp / "token", _token(ca_hash, "server"), 0o600)
        if config.cluster.agent_token:
            _write_new(tmp / "agent-token", _token(ca_hash, "node"), 0o600)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ca_hash


def tls_files(config: FleetConfig) -> list[TlsFile]:
    """The cluster's CA layout as `cluster init` wrote it (keys marked secret), checked whole
    (`check`), and its tokens checked to pin it."""
    tls = cluster_dir(config) / "tls"
    if not tls.is_dir():
        raise UserError(
            f"{config.source}: cluster.create: no cluster yet; run `pifleet cluster init {config.source}`"
        )
    files = [
        TlsFile(str(p.relative_to(tls)), p.read_bytes(), p.suffix == ".key")
        for p in sorted(tls.rglob("*"))
        if p.is_file()
    ]
    check_layout({f.path: f.data for f in files}, tls)
    ca_hash = k3s_ca_hash(next(f.data for f in files if f.path == "server-ca.crt"))
    for name in ("token", *(["agent-token"] if config.cluster.agent_token else [])):
        check_token(cluster_dir(config) / name, ca_hash)
    return files


def ca_hash_of(config: FleetConfig) -> str:
    server_ca = next(f for f in tls_files(config) if f.path == "server-ca.crt")
    return k3s_ca_hash(server_ca.data)


def init_command(args: argparse.Namespace) -> int:
    config = load(Path(args.config))
    ca_hash = create(config)
    print(f"created {cluster_dir(config)}/ (CA set, server token; keep it private and backed up)")
    print(f"K10 CA hash: {ca_hash}")
    return 0


def show_command(args: argparse.Namespace) -> int:
    config = load(Path(args.config))
    files = {f.path: f for f in tls_files(config)}
    print(f"cluster:     {cluster_dir(config)}")
    print(f"servers:     {', '.join(config.cluster.servers)}")
    print(f"K10 CA hash: {ca_hash_of(config)}")
    for name in ("root", "intermediate", *LEAF_CAS):
        pem = files.get(f"{name}-ca.pem")
        if pem is None:
            continue
        cert = x509.load_pem_x509_certificate(pem.data)
        expires = cert.not_valid_after_utc.strftime("%Y-%m-%d")
        print(f"  {name + ' CA':<20} expires {expires}  {cert.subject.rfc4514_string()}")
    for secret in ("token", "agent-token"):
        path = cluster_dir(config) / secret
        with contextlib.suppress(FileNotFoundError):
            print(f"  {secret:<20} {path} (mode {path.stat().st_mode & 0o777:04o}; not shown)")
    return 0
