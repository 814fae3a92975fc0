"""`python3 -m firstboot custody`: move the device's secrets off the boot partition.

The boot partition is FAT: anyone who pulls the card reads it, and a deleted FAT file keeps
its bytes in free clusters. So every secret that the seed put there is copied into the
root filesystem (0600) and its clusters are overwritten with zeros before the file goes or
is replaced by a version without the secret. `pifleet-custody.service` runs this on every
boot after cloud-init's local stage (which has read the seed by then) and before
`network-pre.target`, so no secret is on the FAT once the device is on a network; the
agent runs it again when it starts.

Which files those are, and where each is kept, is firstboot/secrets.py's table.

cloud-init keeps working on later boots: its own seed directory (/var/lib/cloud/seed/nocloud,
with meta-data) now holds the complete seed, so NoCloud's instance-id check
(cloudinit/sources/DataSourceNoCloud.py: `_quick_read_instance_id` reads the seed
directories' meta-data, like the `ds=nocloud;i=` Imager writes) matches and cloud-init uses
its cache; per-instance modules (users, SSH keys, network) never run again.

Every step survives a power cut: the copy is written first (atomically); a file that keeps a
cleaned version is rewritten in place, zeros first, then the cleaned text padded to the same
length, so the FAT's allocation and directory entry never change (the fault series found
that a FAT rename left a directory entry pointing at freed clusters after a power cut);
a file that holds NUL bytes is one we were rewriting, whose copy is already safe. A file
that goes is zeroed in place and then unlinked, its directory synced at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional

from firstboot import joinconfig, secrets
from firstboot.paths import Root, fsync_dir, write_all, write_atomic
from firstboot.retry import Terminal

SEED_DIR = secrets.SEED_DIR  # tests/test_custody.py and builder/fleet/diagnose.py read it here
MOVED_NODE_PASSWORD = secrets.NODE_PASSWORD_COPY.path  # builder/fleet/diagnose.py reads it here
SEED_FILES = ("meta-data", *(s.path for s in secrets.CLEANED))  # what NoCloud reads
SSH_KEYS = ("ssh_keys:", "ssh_deletekeys:", "ssh_genkeytypes:")
CHUNK = 1 << 16

Clean = Callable[[bytes], Optional[bytes]]  # the content without its secret; None: no secret


def clean_user_data(data: bytes) -> Optional[bytes]:
    """user-data without its top-level ssh_keys block (and the two keys that go with it)."""
    lines = data.splitlines(keepends=True)
    kept: List[bytes] = []
    dropping = found = False
    for line in lines:
        top_level = bool(line.strip()) and not line[:1].isspace()
        if top_level:
            dropping = line.decode("utf-8", "replace").startswith(SSH_KEYS)
            found = found or line.startswith(b"ssh_keys:")
        if not dropping:
            kept.append(line)
    return b"".join(kept) if found else None


def clean_network_config(data: bytes) -> Optional[bytes]:
    """network-config without `password:` lines (Wi-Fi PSKs)."""
    lines = data.splitlines(keepends=True)
    kept = [ln for ln in lines if not ln.strip().startswith(b"password:")]
    return b"".join(kept) if len(kept) != len(lines) else None


CLEANERS: Dict[str, Clean] = {
    secrets.USER_DATA.path: clean_user_data,
    secrets.NETWORK_CONFIG.path: clean_network_config,
}


def secure(root: Root, boot_dir: str, say: Callable[[str], None] = lambda _line: None) -> int:
    """Take every secret off the boot partition at `boot_dir`; returns how many files moved.
    Terminal (one line) when a file cannot be read, written or removed."""
    try:
        return _secure(root, boot_dir.rstrip("/"), say)
    except OSError as exc:
        raise Terminal(
            "cannot move the secrets off the boot partition: "
            + str(exc.filename)
            + ": "
            + str(exc.strerror)
        ) from None


def _secure(root: Root, boot: str, say: Callable[[str], None]) -> int:
    moved = 0
    seed = {n: root(boot + "/" + n) for n in SEED_FILES}
    for secret in secrets.SECRETS:
        path, kept = secret.at(boot), str(secret.kept)
        if secret.custody == secrets.CLEAN:
            done = _replace(
                root(path), CLEANERS[secret.path], lambda: _keep_seed(root, seed), root(kept)
            )
            line = "moved the secrets of " + path + " into " + SEED_DIR
        elif secret.custody == secrets.RAN:
            done = root(path).exists() and not _runs_firstrun(root)
            if done:
                _remove(root(path), None)
            line = "removed " + path + " (it has run)"
        elif secret.custody == secrets.MOVE:
            done = _remove(root(path), root(kept))
            line = "moved " + path + " to " + kept
        else:
            continue
        if done:
            say(line)
            moved += 1
    return moved


def boot_dir_of(root: Root, config: str = joinconfig.JOIN_CONFIG_PATH) -> str:
    """The boot partition's mount point from the join config (Pi OS's when unreadable)."""
    try:
        return joinconfig.load_join_config(root(config).read_bytes(), config).boot_dir
    except (OSError, joinconfig.JoinConfigError):
        return "/boot/firmware"


def _runs_firstrun(root: Root) -> bool:
    """Whether this boot runs firstrun.sh (Imager's `systemd.run=` is on the command line)."""
    try:
        return b"systemd.run=" in root("/proc/cmdline").read_bytes()
    except OSError:
        return True  # cannot tell: keep it


def _keep_seed(root: Root, seed: Dict[str, Path]) -> None:
    """Copy the seed into cloud-init's seed directory, 0600: meta-data, and each file that
    still holds a secret or has no copy yet (a file being zeroed is skipped: its copy was
    made before the zeroing began)."""
    for name, path in seed.items():
        data = _read(path)
        if data is None or b"\0" in data:
            continue
        copy = root(SEED_DIR + "/" + name)
        clean = CLEANERS.get(name)
        if clean is None or clean(data) is not None or not copy.exists():
            write_atomic(copy, data, 0o600)


def _replace(path: Path, clean: Clean, keep: Callable[[], None], copy: Path) -> bool:
    """Rewrite `path` in place without its secret: zeros over every byte first, then the
    cleaned text padded to the same length, so no cluster is freed or allocated and the
    directory entry keeps its place (a FAT rename or truncate is not safe from power cuts)."""
    data = _read(path)
    if data is None:
        return False
    if b"\0" in data:  # the power failed between zeroing and rewriting: the copy is safe
        kept = _read(copy) or b""
        cleaned = clean(kept) or kept
    else:
        found = clean(data)
        if found is None:
            return False
        keep()
        cleaned = found
    _zero(path)
    _write_at_start(path, _padded(cleaned, len(data)))
    return True


def _padded(text: bytes, size: int) -> bytes:
    """`text` grown to `size` bytes with a YAML comment line (`###...`), if it is shorter."""
    missing = size - len(text)
    if missing <= 0:
        return text
    if missing == 1:
        return text + b"\n"
    return text + b"#" * (missing - 1) + b"\n"


def _remove(path: Path, dest: Optional[Path]) -> bool:
    """Copy `path` to `dest` (0600), zero its clusters, unlink it."""
    data = _read(path)
    if data is None:
        return False
    if dest is not None and b"\0" not in data:
        write_atomic(dest, data, 0o600)
    _zero(path)
    os.unlink(str(path))
    fsync_dir(path.parent)
    return True


def _read(path: Path) -> Optional[bytes]:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write_at_start(path: Path, data: bytes) -> None:
    """Write `data` over the start of the existing file (same clusters), then fsync."""
    fd = os.open(str(path), os.O_WRONLY | os.O_NOFOLLOW)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def _zero(path: Path) -> None:
    """Overwrite the file's bytes in place (FAT writes them to the same clusters), then fsync."""
    fd = os.open(str(path), os.O_WRONLY | os.O_NOFOLLOW)
    try:
        left = os.fstat(fd).st_size
        zeros = bytes(CHUNK)
        while left > 0:
            left -= os.write(fd, zeros[: min(CHUNK, left)])
        os.fsync(fd)
    finally:
        os.close(fd)
