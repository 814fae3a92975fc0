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

import contextlib
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from builder.disk import sparse
from builder.disk.debugfs import (
    entry_script,
    mkdir_script,
    parents,
    parse_listing,
    parse_stat,
    quote,
    sections,
    walk,
)
from builder.disk.entries import Directory, Entry, File, Inode, Symlink
from builder.disk.superblock import Usage, read_superblock
from builder.util.atomic import remove_stale, temp_path_for
from builder.util.errors import BuildError, UserError
from builder.util.private import create_private, private_dir, write_private
from builder.util.run import PRIVATE_UMASK, no_fsync_env, run, stream

log = logging.getLogger("pifleet.ext4")
KEPT_FILE_LIMIT = 8 * 1024 * 1024  # larger files read are not kept (a kernel, an initrd)


class Ext4Filesystem:
    """The ext4 filesystem at `offset` in `image`."""

    def __init__(self, image: Path, offset: int, epoch: int) -> None:
        self.image = image
        self.offset = offset
        self.epoch = epoch
        self._staged: dict[str, Entry] = {}
        self._forget()

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
    # Every answer debugfs gives is kept until the next write (`_forget`): stat results and
    # listings by the path asked, file contents by the path dumped, and fingerprints. A phase
    # that says ahead what it will read (`prefetch`) costs one debugfs run, plus one per
    # round of symlinks to follow.

    def _forget(self) -> None:
        self._inodes: dict[str, Inode | None] = {}
        self._listings: dict[str, list[str]] = {}
        self._contents: dict[str, bytes] = {}
        self._fingerprints: dict[str, tuple[bytes, str]] = {}

    def open_problem(self) -> str | None:
        """Why debugfs cannot open this filesystem (damaged), or None when it can."""
        _out, errors = self._debugfs(["stat /"])
        opening = [e for e in errors if "while trying to open" in e or "not open" in e]
        if not opening:
            return None
        return opening[0].removeprefix("debugfs: ").split(" while trying to open")[0]

    def stat_many(self, paths: list[str]) -> dict[str, Inode | None]:
        """Inode facts for each path (None where absent); symlinks are not followed."""
        self._query(stats=paths)
        return {p: self._inodes[p] for p in paths}

    def stat(self, path: str) -> Inode | None:
        return self.stat_many([path])[path]

    def resolve(self, path: str) -> str:
        """`path` with every symlink resolved (absolute links stay inside this filesystem)."""
        return self._resolve_all([path], dump=False)[0][path]

    def read(self, path: str, follow: bool = True) -> bytes | None:
        """Content of a regular file (staged content wins), or None when absent."""
        return self.read_many([path], follow)[path]

    def read_many(self, paths: list[str], follow: bool = True) -> dict[str, bytes | None]:
        """`read` for each path, in one debugfs run per round of symlinks, plus at most one."""
        found: dict[str, bytes | None] = {}
        wanted = []
        for path in paths:
            staged = self._staged.get(path)
            if isinstance(staged, File):
                found[path] = (
                    staged.data
                    if staged.data is not None
                    else (staged.source or Path()).read_bytes()
                )
            else:
                wanted.append(path)
        return {**found, **self._fetch(wanted, follow)}

    def prefetch(
        self, reads: Sequence[str], stats: Sequence[str] = (), listings: Sequence[str] = ()
    ) -> None:
        """Read (following symlinks), stat and list ahead, all in the first debugfs run: what a
        phase asks next is answered from what is kept. Nothing is raised here: a path that
        cannot be read raises when it is read."""
        with contextlib.suppress(BuildError):
            self._fetch(reads, True, stats, listings, strict=False)

    def _fetch(
        self,
        paths: Sequence[str],
        follow: bool,
        stats: Sequence[str] = (),
        listings: Sequence[str] = (),
        strict: bool = True,
    ) -> dict[str, bytes | None]:
        if follow:
            real, whole = self._resolve_all(paths, stats, listings)
        else:
            real = {p: p for p in paths}
            guesses = [p for p in paths if p not in self._contents]
            whole = self._keep(self._query([*paths, *stats], listings, guesses)[0])
        inodes = self.stat_many(sorted(set(real.values())))
        sizes = {r: i.size for r, i in inodes.items() if i is not None and i.kind == "regular"}
        have = {r: self._contents.get(r, whole.get(r)) for r in sizes}
        missing = sorted(r for r, data in have.items() if data is None)
        dumped, errors = self._query(dumps=missing)
        for r in missing:
            if strict and (errors or len(dumped[r]) != sizes[r]):
                path = next(p for p in paths if real[p] == r)
                raise BuildError(f"reading {path} from the root filesystem: {'; '.join(errors)}")
        have.update(self._keep(dumped))
        return {p: have.get(real[p]) for p in paths}

    def _resolve_all(
        self,
        paths: Sequence[str],
        stats: Sequence[str] = (),
        listings: Sequence[str] = (),
        dump: bool = True,
    ) -> tuple[dict[str, str], dict[str, bytes]]:
        """Each path with every symlink resolved, one debugfs run per round of links; `stats`
        and `listings` go into the first run. With `dump`, each run also dumps each path as it
        is if nothing further is a link, and each regular file already resolved: a path without
        links is read in the run that resolves it (the whole files dumped are returned too)."""
        stats, listings = list(stats), list(listings)
        whole: dict[str, bytes] = {}
        while True:
            done, wanted, guesses = {}, [], []
            for path in paths:
                reached, unknown = walk(path, self._inodes)
                wanted += unknown
                if unknown:
                    guesses += [reached] if reached else []
                else:
                    done[path] = reached
                    inode = self._inodes.get(reached)
                    guesses += [reached] if inode is not None and inode.kind == "regular" else []
            if not (wanted or stats or listings):
                return done, whole
            dumps = [g for g in guesses if dump and g not in self._contents and g not in whole]
            whole.update(self._keep(self._query([*stats, *wanted], listings, dumps)[0]))
            stats, listings = [], []

    def _keep(self, dumped: dict[str, bytes]) -> dict[str, bytes]:
        """The dumps that are whole regular files (a guessed path may be a link or absent),
        kept when small."""
        whole = {}
        for path, data in dumped.items():
            inode = self._inodes.get(path)
            if inode is not None and inode.kind == "regular" and inode.size == len(data):
                whole[path] = data
                if len(data) <= KEPT_FILE_LIMIT:
                    self._contents[path] = data
        return whole

    def _query(
        self,
        stats: Sequence[str] = (),
        listings: Sequence[str] = (),
        dumps: Sequence[str] = (),
    ) -> tuple[dict[str, bytes], list[str]]:
        """One debugfs run (none when everything is known): `stat` and `ls -p` what is not kept
        yet, and `dump` each of `dumps`; (what each dump wrote, the error lines)."""
        stats = [p for p in dict.fromkeys(stats) if p not in self._inodes]
        listings = [p for p in dict.fromkeys(listings) if p not in self._listings]
        dumps = list(dict.fromkeys(dumps))
        if not (stats or listings or dumps):
            return {}, []
        with private_dir("ext4") as tmp:
            dests = {p: tmp / f"d{i}" for i, p in enumerate(dumps)}
            for dest in dests.values():
                os.close(create_private(dest))  # debugfs keeps the mode of a file it truncates
            script = [f"stat {quote(p)}" for p in stats]
            script += [f"ls -p {quote(p)}" for p in listings]
            script += [f"dump {quote(p)} {quote(d)}" for p, d in dests.items()]
            out, errors = self._debugfs(script)
            dumped = {p: d.read_bytes() for p, d in dests.items()}
        printed = sections(out, script)
        for path, text in zip(stats, printed, strict=False):
            self._inodes[path] = parse_stat(text)
        for path, text in zip(listings, printed[len(stats) :], strict=False):
            self._listings[path] = parse_listing(text)
        return dumped, errors

    def fingerprint(self, path: str) -> tuple[bytes, str]:
        """(first 64 bytes, sha256) of a regular file, streamed: large binaries never sit in memory."""
        kept = self._contents.get(path)
        if kept is not None:
            return kept[:64], hashlib.sha256(kept).hexdigest()
        if path in self._fingerprints:
            return self._fingerprints[path]
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
        self._fingerprints[path] = (bytes(head), digest.hexdigest())
        return self._fingerprints[path]

    def listdir(self, path: str) -> list[str]:
        self._query(listings=[path])
        return self._listings[path]

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
        paths = {e.path for e in entries}
        current = self.stat_many(sorted(paths | parents(paths)))  # the parents: for `flush`
        # Files that may be unchanged are compared by content: the small ones read in one run.
        alike = [e.path for e in entries if self._content_decides(e, current[e.path])]
        small = [p for p in alike if (i := current[p]) is not None and i.size <= KEPT_FILE_LIMIT]
        self.read_many(small, follow=False)
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
            self._forget()
            _out, errors = self._debugfs(script, write=True)
        if errors:
            raise BuildError(f"writing to the root filesystem of {self.image}: {errors[0]}")
        self._verify(changed)
        log.debug("root filesystem: wrote %s", ", ".join(e.path for e in changed))
        return len(changed)

    def _differs(self, entry: Entry, inode: Inode | None) -> bool:
        if isinstance(entry, File) and self._content_decides(entry, inode):
            return self.fingerprint(entry.path)[1] != entry.digest()
        return self._metadata_differs(entry, inode)

    def _content_decides(self, entry: Entry, inode: Inode | None) -> bool:
        """A file whose inode matches `entry` in everything but content."""
        return isinstance(entry, File) and not self._metadata_differs(entry, inode)

    @staticmethod
    def _metadata_differs(entry: Entry, inode: Inode | None) -> bool:
        if inode is None:
            return True
        if (inode.uid, inode.gid) != (entry.uid, entry.gid):
            return True
        if isinstance(entry, Directory):
            return inode.kind != "directory" or inode.mode != entry.mode
        if isinstance(entry, Symlink):
            return inode.kind != "symlink" or inode.link_target != entry.target
        return inode.kind != "regular" or inode.mode != entry.mode or inode.size != entry.size()

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
        self._forget()
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
