"""ext4 edits through e2fsprogs, straight on the image file (`image?offset=N`).

debugfs writes files, directories and symlinks with exact mode/uid/gid;
resize2fs grows the filesystem; e2fsck checks it. Changes are staged and
applied in one debugfs session: query what exists, write only what differs,
then read everything back, because debugfs reports failures on stderr while
still exiting 0. Timestamps come from E2FSPROGS_FAKE_TIME (the build epoch),
so the same input gives the same bytes, and an unchanged file is never
rewritten (a rebuild of a built image changes nothing).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path, PurePosixPath

from builder.disk import sparse
from builder.disk.debugfs import entry_script, mkdir_script, parents, parse_stat, quote
from builder.disk.entries import Directory, Entry, File, Inode, Symlink
from builder.disk.superblock import Usage, read_superblock
from builder.util.atomic import remove_stale, temp_path_for
from builder.util.errors import BuildError, UserError
from builder.util.private import create_private, private_dir, write_private
from builder.util.run import PRIVATE_UMASK, no_fsync_env, run, stream

log = logging.getLogger("pifleet.ext4")


class Ext4Filesystem:
    """The ext4 filesystem at `offset` in `image`."""

    def __init__(self, image: Path, offset: int, epoch: int) -> None:
        self.image = image
        self.offset = offset
        self.epoch = epoch
        self._staged: dict[str, Entry] = {}

    @property
    def spec(self) -> str:
        """How e2fsprogs names this filesystem: the image with an offset option."""
        if "?" in str(self.image):
            raise UserError(f"{self.image}: e2fsprogs cannot open a path containing '?'")
        return f"{self.image}?offset={self.offset}"

    def _env(self) -> dict[str, str]:
        # libext2fs (debugfs, resize2fs) and e2fsck read different time variables. Every
        # e2fsprogs tool fsyncs the image on close, even read-only; see no_fsync_env.
        times = {"E2FSPROGS_FAKE_TIME": str(self.epoch), "E2FSCK_TIME": str(self.epoch)}
        return {**times, **no_fsync_env()}

    def _debugfs(self, script: list[str], write: bool = False) -> tuple[str, list[str]]:
        """Run debugfs commands; (stdout, error lines other than the banner)."""
        # In a private pifleet-debugfs-<pid>-* folder: a killed run's is removed by the next.
        with private_dir("debugfs") as tmp:
            cmd = tmp / "script.cmd"
            write_private(cmd, ("\n".join(script) + "\n").encode())
            log.debug(
                "debugfs: %s%s", script[0], f" (+{len(script) - 1} more)" if len(script) > 1 else ""
            )
            argv = ["debugfs", *(["-w"] if write else []), "-f", str(cmd), self.spec]
            proc = run(argv, env=self._env(), what="debugfs", umask=PRIVATE_UMASK)  # dumps
        errors = [
            line
            for line in proc.stderr.decode(errors="replace").splitlines()
            if line.strip() and not line.startswith("debugfs ")
        ]
        return proc.stdout.decode(errors="replace"), errors

    # -- reading -------------------------------------------------------------

    def open_problem(self) -> str | None:
        """Why debugfs cannot open this filesystem (damaged), or None when it can."""
        _out, errors = self._debugfs(["stat /"])
        opening = [e for e in errors if "while trying to open" in e or "not open" in e]
        if not opening:
            return None
        return opening[0].removeprefix("debugfs: ").split(" while trying to open")[0]

    def stat_many(self, paths: list[str]) -> dict[str, Inode | None]:
        """Inode facts for each path (None where absent); symlinks are not followed."""
        if not paths:
            return {}
        out, _errors = self._debugfs([f"stat {quote(p)}" for p in paths])
        sections = re.split(r"^debugfs: stat ", out, flags=re.M)[1:]
        result: dict[str, Inode | None] = {}
        for path, section in zip(paths, sections, strict=True):
            result[path] = parse_stat(section)
        return result

    def stat(self, path: str) -> Inode | None:
        return self.stat_many([path])[path]

    def resolve(self, path: str) -> str:
        """`path` with every symlink resolved (absolute links stay inside this filesystem)."""
        parts = list(PurePosixPath(path).parts[1:])
        current = PurePosixPath("/")
        hops = 0
        while parts:
            part = parts.pop(0)
            if part in (".", ".."):
                current = current.parent if part == ".." else current
                continue
            candidate = current / part
            inode = self.stat(str(candidate))
            if inode is None or inode.kind != "symlink" or inode.link_target is None:
                current = candidate
                continue
            hops += 1
            if hops > 40:
                raise BuildError(
                    f"{path}: too many levels of symbolic links in the root filesystem"
                )
            target = PurePosixPath(inode.link_target)
            base = PurePosixPath("/") if target.is_absolute() else current
            parts = list((base / target).parts[1:]) + parts
            current = PurePosixPath("/")
        return str(current)

    def read(self, path: str, follow: bool = True) -> bytes | None:
        """Content of a regular file (staged content wins), or None when absent."""
        staged = self._staged.get(path)
        if isinstance(staged, File):
            return (
                staged.data if staged.data is not None else (staged.source or Path()).read_bytes()
            )
        real = self.resolve(path) if follow else path
        inode = self.stat(real)
        if inode is None or inode.kind != "regular":
            return None
        with private_dir("ext4") as tmp:
            dest = tmp / "f"
            os.close(create_private(dest))  # debugfs keeps the mode of a file it truncates
            _out, errors = self._debugfs([f"dump {quote(real)} {quote(dest)}"])
            if errors or not dest.exists():
                raise BuildError(f"reading {path} from the root filesystem: {'; '.join(errors)}")
            return dest.read_bytes()

    def fingerprint(self, path: str) -> tuple[bytes, str]:
        """(first 64 bytes, sha256) of a regular file, streamed: large binaries never sit in memory."""
        digest = hashlib.sha256()
        head = bytearray()

        def consume(chunk: bytes) -> None:
            if len(head) < 64:
                head.extend(chunk[: 64 - len(head)])
            digest.update(chunk)

        stream(
            ["debugfs", "-R", f"cat {quote(path)}", self.spec],
            consume,
            env=self._env(),
            what="debugfs",
        )
        return bytes(head), digest.hexdigest()

    def listdir(self, path: str) -> list[str]:
        out, _ = self._debugfs([f"ls -p {quote(path)}"])
        names = []
        for line in out.splitlines():
            fields = line.split("/")
            if len(fields) >= 7 and fields[5] not in (".", ".."):
                names.append(fields[5])
        return sorted(names)

    def usage(self) -> Usage:
        """Size and free space from the superblock (read in Python: dumpe2fs -h walks every group)."""
        return read_superblock(self.image, self.offset)

    # -- writing -------------------------------------------------------------

    def stage(self, entry: Entry) -> None:
        self._staged[entry.path] = entry

    def pending(self) -> list[Entry]:
        """The staged entries that differ from the filesystem (what `flush` will write)."""
        entries = sorted(self._staged.values(), key=lambda e: e.path)
        if not entries:
            return []
        current = self.stat_many([e.path for e in entries])
        return [e for e in entries if self._differs(e, current[e.path])]

    @staticmethod
    def bytes_needed(entries: list[Entry]) -> int:
        """Room `entries` need: 4 KiB blocks plus metadata slack."""
        total = 0
        for entry in entries:
            size = entry.size() if isinstance(entry, File) else 4096
            total += -(-size // 4096) * 4096 + 4096
        return total + total // 64

    def flush(self, changed: list[Entry] | None = None) -> int:
        """Write staged entries that differ from the filesystem; returns how many changed.

        `changed` is the result of `pending()` when the caller already computed it.
        """
        if changed is None:
            changed = self.pending()
        self._staged.clear()
        if not changed:
            return 0
        dirs = parents({e.path for e in changed})
        current = self.stat_many(sorted(dirs | {e.path for e in changed}))
        script = mkdir_script(dirs, current, {e.path for e in changed if isinstance(e, Directory)})
        with private_dir("ext4") as tmp:
            for i, entry in enumerate(changed):
                script += entry_script(entry, current[entry.path], tmp, i)
            _out, errors = self._debugfs(script, write=True)
        if errors:
            raise BuildError(f"writing to the root filesystem of {self.image}: {errors[0]}")
        self._verify(changed)
        log.debug("root filesystem: wrote %s", ", ".join(e.path for e in changed))
        return len(changed)

    def _differs(self, entry: Entry, inode: Inode | None) -> bool:
        if inode is None:
            return True
        if (inode.uid, inode.gid) != (entry.uid, entry.gid):
            return True
        if isinstance(entry, Directory):
            return inode.kind != "directory" or inode.mode != entry.mode
        if isinstance(entry, Symlink):
            return inode.kind != "symlink" or inode.link_target != entry.target
        if inode.kind != "regular" or inode.mode != entry.mode or inode.size != entry.size():
            return True
        return self.fingerprint(entry.path)[1] != entry.digest()

    def _verify(self, entries: list[Entry]) -> None:
        after = self.stat_many([e.path for e in entries])
        for entry in entries:
            inode = after[entry.path]
            wrong = inode is None or (inode.uid, inode.gid) != (entry.uid, entry.gid)
            if isinstance(entry, File) and inode is not None:
                wrong = wrong or (inode.kind, inode.mode, inode.size) != (
                    "regular",
                    entry.mode,
                    entry.size(),
                )
            if isinstance(entry, Symlink) and inode is not None:
                wrong = wrong or inode.link_target != entry.target
            if wrong:
                raise BuildError(
                    f"{entry.path} did not read back as written in the root filesystem"
                )

    # -- whole-filesystem operations -----------------------------------------

    def check(self) -> None:
        """e2fsck -fn: a read-only full check; raises if the filesystem has errors."""
        proc = run(["e2fsck", "-fn", self.spec], env=self._env(), check=False)
        if proc.returncode not in (0,):
            lines = proc.stdout.decode(errors="replace").strip().splitlines()
            raise BuildError(
                f"the root filesystem has errors (e2fsck): {lines[-1] if lines else ''}"
            )

    def grow(self, new_size: int) -> None:
        """Grow the filesystem to `new_size` bytes (the partition must already be that big).

        resize2fs truncates a regular file to the filesystem's size and ignores
        `?offset=`, so the filesystem is carved out to a sparse file beside the
        image, resized there and put back (holes stay holes both ways).
        """
        old_size = self.usage().size
        remove_stale(self.image.parent)
        part = temp_path_for(self.image.with_name(f"{self.image.name}.rootfs-resize"))
        try:
            sparse.extract(self.image, self.offset, old_size, part)
            os.truncate(part, new_size)
            run(["e2fsck", "-f", "-p", str(part)], env=self._env(), what="e2fsck before resize")
            run(["resize2fs", str(part), f"{new_size // 1024}K"], env=self._env(), what="resize2fs")
            sparse.put_back(part, self.image, self.offset, new_size)
        finally:
            part.unlink(missing_ok=True)
