"""The agent's atomic write survives a power cut on FAT too (firstboot/paths.py).

vfat's rename over an existing file moves the new inode into the old file's directory slot;
the slot is written when that inode is (fat_write_inode), while a directory fsync writes the
directory's buffers and the FAT table, where the old file's clusters are already free. The
QEMU power cut in `start` (tests/test_boot_faults.py, verify then start on one disk) met it:
after the cut, report.json's slot pointed at freed clusters, the kernel remounted the boot
partition read-only, and the agent could not finish `cleanup`. No power can be cut here, so
this test watches the order of the syncs the kernel needs: the renamed file itself is
fsynced after the rename, then its directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from firstboot import paths


def test_the_renamed_file_is_fsynced_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "report.json"
    target.write_text("the old story\n")
    synced: list[str] = []
    renamed: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        renamed.append(dst)
        synced.append("<rename>")
        real_replace(src, dst)

    monkeypatch.setattr(paths.os, "fsync", fsync)
    monkeypatch.setattr(paths.os, "replace", replace)
    paths.write_atomic(target, b"the new story\n")
    assert target.read_bytes() == b"the new story\n"
    assert renamed == [str(target)]
    after = synced[synced.index("<rename>") + 1 :]
    assert after == [str(target), str(tmp_path)], synced
