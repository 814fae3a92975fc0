"""`pifleet flash`: bmap writes, read-back verify, personalization, and the safety rules.

The card is a regular file (no loop device, no root needed to write). The
safety rules run on fabricated sysfs/procfs trees under a temporary root, with
a real block device node whose major:minor the fabricated tree describes; the
real machine's root disk is refused through the real CLI, with --dry-run as a
second guard so that even a broken rule could not write to it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import yaml

from builder.disk.table import read_table
from builder.fleet import flash
from builder.fleet.destination import FileDestination
from builder.fleet.target import describe
from builder.outputs import bmap
from builder.util.errors import BuildError, UserError
from tests.conftest import REPO, TEST_TOKEN, pifleet
from tests.fake_sysfs import (
    CARD_SECTORS,
    MMC_CARD,
    SATA_SCSI,
    TARGET_DEV,
    USB_SCSI,
    FakeSystem,
    usb_card,
)
from tests.flash_helpers import GOLDEN, built, one_line_error, run, work
from tests.image_read import fat_read, sha256

__all__ = ["built", "work"]  # the fixtures this module's tests take


def read_bmap(path: Path) -> tuple[int, list[tuple[int, int, str]]]:
    """Image size and (start byte, end byte, sha256) of every mapped range, read independently."""
    data = path.read_bytes()
    root = ET.fromstring(data)
    stated = (root.findtext("BmapFileChecksum") or "").strip()
    assert hashlib.sha256(data.replace(stated.encode(), b"0" * 64)).hexdigest() == stated
    size, block = int(root.findtext("ImageSize") or 0), int(root.findtext("BlockSize") or 0)
    ranges = []
    for node in root.iter("Range"):
        first, _, last = (node.text or "").strip().partition("-")
        start, end = int(first) * block, min((int(last or first) + 1) * block, size)
        ranges.append((start, end, node.get("chksum", "")))
    assert ranges and size > 0
    return size, ranges


def data_extents(path: Path) -> list[tuple[int, int]]:
    """(start, end) of every data extent of a file, by SEEK_DATA/SEEK_HOLE."""
    extents = []
    with open(path, "rb") as f:
        fd, pos, size = f.fileno(), 0, os.fstat(f.fileno()).st_size
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            pos = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append((start, pos))
    return extents


def holes_supported(directory: Path) -> bool:
    probe = directory / ".hole-probe"
    with open(probe, "wb") as f:
        f.truncate(1 << 20)
        f.write(b"x")
    try:
        return data_extents(probe) != [(0, 1 << 20)]
    finally:
        probe.unlink()


def partition_digest(image: Path, number: int) -> str:
    part = read_table(image).partition(number)
    return sha256(image, part.start, part.size)


# --- writing, verifying, personalizing -----------------------------------------------------


def test_flash_writes_exactly_the_mapped_ranges_and_verifies(work: Path) -> None:
    image, card = work / GOLDEN, work / "card.img"
    proc = run("flash", GOLDEN, "card.img", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "wrote and verified" in proc.stdout
    size, ranges = read_bmap(work / (GOLDEN + ".bmap"))
    assert card.stat().st_size == size == image.stat().st_size
    assert card.stat().st_mode & 0o777 == 0o600  # it holds the join token
    assert [p.name for p in work.iterdir() if p.name.startswith(".card.img")] == []
    for start, end, chksum in ranges:
        assert sha256(card, start, end - start) == chksum == sha256(image, start, end - start)
    # The whole card equals the image (unmapped ranges read as zeros, as in the image) ...
    sums = {}
    for line in (work / "out/SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    assert sha256(card) == sums["edge-fleet.img"]
    # ... and nothing outside the mapped ranges was written at all: those are still holes.
    if holes_supported(work):
        for start, end in data_extents(card):
            assert any(s <= start and end <= e for s, e, _ in merged(ranges)), (start, end)


def merged(ranges: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for start, end, chksum in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end), "")
        else:
            out.append((start, end, chksum))
    return out


def test_flash_then_personalize_gives_distinct_cards(work: Path) -> None:
    image = work / GOLDEN
    golden_sha = sha256(image)
    golden_meta = yaml.safe_load(fat_read(image, "/meta-data"))
    ids = set()
    for host in ("pi-002", "pi-003"):
        proc = run(
            "flash", GOLDEN, f"{host}.card", "--config", "fleet.yaml", "--device", host, cwd=work
        )
        assert proc.returncode == 0, proc.stderr
        assert f"personalized {host}.card as {host}" in proc.stdout
        card = work / f"{host}.card"
        user = yaml.safe_load(fat_read(card, "/user-data"))
        meta = yaml.safe_load(fat_read(card, "/meta-data"))
        assert user["hostname"] == host == meta["local-hostname"]
        ids.add(meta["instance-id"])
        assert partition_digest(card, 2) == partition_digest(image, 2), "root fs untouched"
        key = (work / f"out/devices/{host}/node-password").read_text()
        assert fat_read(card, "/pifleet/node-password") == key.encode()
        assert key.strip() not in proc.stdout + proc.stderr
    assert len(ids) == 2 and golden_meta["instance-id"] not in ids
    known = (work / "out/known_hosts").read_text()
    assert "pi-002" in known and "pi-003" in known
    assert sha256(image) == golden_sha, "the golden image is only read"


def test_read_back_verify_catches_a_corrupted_card(work: Path) -> None:
    """Real image, real .bmap, real write; then the card loses a byte, as a failing card does."""
    image, card = work / GOLDEN, work / "card.img"
    block_map = bmap.parse((work / (GOLDEN + ".bmap")).read_bytes(), "bmap")
    written = flash.write(image, FileDestination(card), card, block_map)
    assert written == sum(end - start for start, end, _ in read_bmap(work / (GOLDEN + ".bmap"))[1])
    flash.verify(card, block_map)
    victim = block_map.ranges[len(block_map.ranges) // 2]
    with open(card, "r+b") as f:
        f.seek(victim.first * bmap.BLOCK + 100)
        old = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([old[0] ^ 0xFF]))
    with pytest.raises(
        BuildError, match=rf"blocks {victim.first}-{victim.last} read back differently"
    ):
        flash.verify(card, block_map)
    # a good card again, then one that lost its end
    flash.write(image, FileDestination(card), card, block_map)
    flash.verify(card, block_map)
    os.truncate(card, block_map.ranges[-1].first * bmap.BLOCK)
    with pytest.raises(BuildError, match="read back ended early"):
        flash.verify(card, block_map)


def test_an_image_changed_after_its_bmap_is_not_blamed_on_the_card(work: Path) -> None:
    """Personalizing the golden image in place leaves its .bmap stale: flash says so."""
    proc = run(
        "personalize",
        GOLDEN,
        "--config",
        "fleet.yaml",
        "--device",
        "pi-001",
        "--in-place",
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr
    proc = run("flash", GOLDEN, "card.img", cwd=work)
    one_line_error(
        proc, 1, "edge-fleet.img: blocks", "differ from its bmap", "flashing card.img stopped"
    )
    assert sorted(p.name for p in work.iterdir() if "card" in p.name) == []  # no partial card


# --- refusals and dry runs through the real CLI --------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["missing.img", "card.img"], ["missing.img: no such image file"]),
        ([GOLDEN, "/dev/pifleet-no-such-card"], ["/dev/pifleet-no-such-card: no such device"]),
        (
            [GOLDEN, "card.img", "--config", "fleet.yaml", "--device", "pi-999"],
            ["no device named 'pi-999'"],
        ),
        (
            [GOLDEN, "card.img", "--device", "pi-001"],
            ["--device, --reflash and --ledger need --config"],
        ),
        (
            [GOLDEN, "card.img", "card.img", "--yes"],
            ["card.img (target 2): the same file as target 1"],
        ),
        ([GOLDEN, "card.img", "--bmap", "nope.bmap"], ["nope.bmap: no such bmap file"]),
        ([GOLDEN, GOLDEN, "--yes"], ["edge-fleet.img: is the image being flashed itself"]),
        ([GOLDEN, GOLDEN + ".bmap", "--yes"], ["is the bmap being flashed itself"]),
        ([GOLDEN, "no-such-dir/card.img"], ["no-such-dir/card.img: no such device or file"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    work: Path, args: list[str], fragments: list[str]
) -> None:
    before = {p: sha256(p) for p in (work / "out").iterdir() if p.is_file()}
    proc = run("flash", *args, cwd=work)
    one_line_error(proc, 2, *fragments)
    assert not (work / "card.img").exists()
    assert {p: sha256(p) for p in (work / "out").iterdir() if p.is_file()} == before


def test_dry_run_writes_nothing(work: Path) -> None:
    proc = run("flash", GOLDEN, "card.img", "--dry-run", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "dry run: would write" in proc.stdout and not (work / "card.img").exists()
    card = work / "card.img"
    card.write_bytes(b"old card contents\n" * 1000)
    proc = run(
        "flash", GOLDEN, "card.img", "--config", "fleet.yaml", "--device", "pi-001", "--dry-run",
        "--yes", cwd=work,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "would then personalize the card as pi-001" in proc.stdout
    assert card.read_bytes() == b"old card contents\n" * 1000
    assert not (work / "out/devices").exists() and not (work / "out/known_hosts").exists()


def root_disk_nodes() -> list[tuple[str, str]]:
    """(major:minor, kernel name) of the device holding / on this machine and, when that is a
    partition, of its whole disk; [] when / is not on a block device (overlay, tmpfs, ...)."""
    dev = source = ""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            dev, source = fields[2], fields[fields.index("-", 6) + 2]
    if not dev:
        return []
    node = Path("/sys/dev/block", dev)
    if not node.exists() and source.startswith("/dev/") and Path(source).is_block_device():
        rdev = os.stat(source).st_rdev  # btrfs and the like: anonymous dev, real source
        node = Path("/sys/dev/block", f"{os.major(rdev)}:{os.minor(rdev)}")
    if not node.exists():
        return []
    node = node.resolve()
    found = [((node / "dev").read_text().strip(), node.name)]
    if (node / "partition").exists():
        found.append(((node.parent / "dev").read_text().strip(), node.parent.name))
    return found


def device_node(tmp_path: Path, dev: str, name: str) -> Path | None:
    """A block device node for `dev`: /dev/<name> when it is that device, else one made here."""
    major, minor = (int(x) for x in dev.split(":"))
    real = Path("/dev", name)
    if real.is_block_device() and real.stat().st_rdev == os.makedev(major, minor):
        return real
    made = tmp_path / name
    try:
        os.mknod(made, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
    except OSError:
        return None
    return made


@pytest.mark.parametrize("dry_run", [True, False])
def test_the_disk_holding_root_is_refused(work: Path, tmp_path: Path, dry_run: bool) -> None:
    nodes = root_disk_nodes()
    if not nodes:
        pytest.skip("/ is not on a block device here")
    for dev, name in nodes:
        node = device_node(tmp_path, dev, name)
        if node is None:
            pytest.skip(f"no node for /dev/{name} ({dev}) and no right to make one")
        try:
            # Guard first, in-process: never hand the real root disk to the CLI unless refused.
            reason = describe(node).refusal(0)
            assert reason is not None and "root filesystem" in reason, reason
            args = ["--dry-run"] if dry_run else []  # without it: no --yes and no terminal
            proc = pifleet("flash", GOLDEN, str(node), *args, cwd=work)
            line = one_line_error(proc, 2, str(node), "holds the running system's root filesystem")
            assert "target:" not in proc.stdout, "refused before anything else"
            assert line == f"pifleet: error: {reason}"
        finally:
            if node.parent == tmp_path:
                node.unlink()


# --- confirmation ----------------------------------------------------------------------------


def run_on_tty(args: list[str], cwd: Path, answer: str) -> subprocess.CompletedProcess[str]:
    """The real CLI with a pseudo-terminal as stdin, answering the question with `answer`."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "builder", *args],
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(slave)
        os.write(master, answer.encode() + b"\n")
        out, err = proc.communicate(timeout=300)
    finally:
        os.close(master)
    assert TEST_TOKEN not in out + err and "Traceback" not in out + err
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.fixture
def old_card(work: Path) -> Path:
    """A card that already holds data (a regular file with content stands in for it)."""
    card = work / "card.img"
    card.write_bytes(b"\xa5" * (1 << 20))
    return card


def test_no_terminal_and_no_yes_writes_nothing(work: Path, old_card: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "flash", GOLDEN, "card.img"],
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    one_line_error(proc, 2, "card.img: not asking on a non-terminal; pass --yes")
    assert old_card.read_bytes() == b"\xa5" * (1 << 20)


@pytest.mark.parametrize("answer", ["n", "", "y"])
def test_anything_but_yes_writes_nothing(work: Path, old_card: Path, answer: str) -> None:
    proc = run_on_tty(["flash", GOLDEN, "card.img"], work, answer)
    assert "Everything on card.img will be lost. Type 'yes'" in proc.stdout
    assert "card.img (a regular file, 1.0 MiB)" in proc.stdout
    one_line_error(proc, 2, "card.img: not confirmed; nothing was written")
    assert old_card.read_bytes() == b"\xa5" * (1 << 20)


def test_yes_on_the_terminal_writes(work: Path, old_card: Path) -> None:
    proc = run_on_tty(["flash", GOLDEN, "card.img"], work, "yes")
    assert proc.returncode == 0, proc.stderr
    assert sha256(old_card) == sha256(work / GOLDEN)


# --- the safety rules on fabricated sysfs/procfs trees ----------------------------------------


@pytest.fixture
def node(tmp_path: Path) -> Path:
    """A real block device node numbered TARGET_DEV; only ever stat()ed, never opened."""
    path = tmp_path / "dev-card"
    try:
        os.mknod(path, 0o600 | stat.S_IFBLK, os.makedev(240, 0))
    except OSError:
        pytest.skip("cannot make a block device node here (needs CAP_MKNOD)")
    return path


def test_a_usb_card_is_accepted_and_shown_with_model_size_serial(
    tmp_path: Path, node: Path
) -> None:
    root = usb_card(FakeSystem(tmp_path / "root")).done()
    target = describe(node, system_root=root)
    assert target.refusal(600 * 1024 * 1024) is None
    assert (
        target.summary() == f"{node} (Generic STORAGE DEVICE, 59.5 GiB, serial 000000000819, USB)"
    )
    assert target.children == ("sdb1", "sdb2") and not target.partition


def test_an_mmc_card_is_accepted_and_shown_with_model_size_serial(
    tmp_path: Path, node: Path
) -> None:
    system = FakeSystem(tmp_path / "root").disk(
        MMC_CARD, "mmcblk0", TARGET_DEV, {"mmcblk0p1": "241:1"},
        size=str(CARD_SECTORS), name="SC64G", serial="0x1234abcd",
    )  # fmt: skip
    target = describe(node, system_root=system.done())
    assert target.refusal(600 * 1024 * 1024) is None  # not "removable", but MMC
    assert target.summary() == f"{node} (SC64G, 59.5 GiB, serial 0x1234abcd, MMC)"


def refused(node: Path, root: Path, image_size: int = 600 * 1024 * 1024) -> str:
    reason = describe(node, system_root=root).refusal(image_size)
    assert reason is not None and "\n" not in reason and str(node) in reason, reason
    return reason


def test_a_partition_is_refused(tmp_path: Path, node: Path) -> None:
    system = FakeSystem(tmp_path / "root").disk(
        USB_SCSI, "sdb", "241:0", {"sdb1": TARGET_DEV}, size=str(CARD_SECTORS), removable="1"
    )
    assert refused(node, system.done()) == f"{node} is a partition; give the whole disk"


def test_an_internal_disk_is_refused(tmp_path: Path, node: Path) -> None:
    system = FakeSystem(tmp_path / "root").disk(
        SATA_SCSI, "sda", TARGET_DEV, {"sda1": "241:1"}, size="1953525168", model="Samsung SSD 870"
    )
    reason = refused(node, system.done())
    assert reason == f"{node} is not a removable, USB or MMC disk (Samsung SSD 870)"


@pytest.mark.parametrize(
    ("mounts", "where"),
    [
        ([("241:1", "/media/ops/bootfs")], "/media/ops/bootfs"),
        ([("241:2", "/media/ops/my card")], "/media/ops/my card"),
        ([("241:1", "/mnt/a"), ("241:2", "/mnt/b")], "/mnt/a, /mnt/b"),
        ([(TARGET_DEV, "/mnt/whole")], "/mnt/whole"),
        ([("253:0", "/mnt/secret")], "/mnt/secret"),  # through LUKS on sdb2
        ([("0:45", "/mnt/btrfs")], "/mnt/btrfs"),  # btrfs: anonymous dev, real source
    ],
)
def test_a_mounted_card_is_refused(
    tmp_path: Path, node: Path, mounts: list[tuple[str, str]], where: str
) -> None:
    system = usb_card(FakeSystem(tmp_path / "root")).dm("dm-0", "253:0", ["sdb2"])
    for dev, point in mounts:
        system.mount(dev, point, source="/dev/sdb2" if dev.startswith("0:") else "")
    reason = refused(node, system.done())
    assert reason == f"{node} is mounted at {where}; unmount it first (pifleet unmounts nothing)"


@pytest.mark.parametrize(
    "root_mount",
    [
        ("241:2", "/dev/sdb2"),  # booted from this very USB disk
        (TARGET_DEV, "/dev/sdb"),  # a whole-disk filesystem
        ("253:0", "/dev/mapper/root"),  # LUKS on sdb2
        ("0:31", "/dev/sdb2"),  # btrfs root: anonymous dev in mountinfo, the disk as source
    ],
)
def test_the_disk_holding_root_is_refused_whatever_sits_between(
    tmp_path: Path, node: Path, root_mount: tuple[str, str]
) -> None:
    system = usb_card(FakeSystem(tmp_path / "root")).dm("dm-0", "253:0", ["sdb2"])
    mapper = system.root / "dev/mapper"
    mapper.mkdir(parents=True)
    (mapper / "root").symlink_to("../dm-0")
    system.mount(root_mount[0], "/", source=root_mount[1])
    reason = refused(node, system.done())
    assert reason == f"{node} holds the running system's root filesystem"


def test_root_elsewhere_does_not_refuse_the_card(tmp_path: Path, node: Path) -> None:
    system = usb_card(FakeSystem(tmp_path / "root")).disk(
        SATA_SCSI, "sda", "8:0", {"sda1": "8:1", "sda2": "8:2"}, size="1953525168"
    )
    system.dm("dm-0", "253:0", ["sda2"]).mount("253:0", "/", source="/dev/mapper/root")
    target = describe(node, system_root=system.done())
    assert not target.holds_root and target.refusal(1 << 30) is None


def test_an_empty_reader_and_a_small_card_are_refused(tmp_path: Path, node: Path) -> None:
    empty = usb_card(FakeSystem(tmp_path / "empty"), size="0").done()
    assert refused(node, empty) == f"{node} has no medium (0 bytes): is a card in the reader?"
    small = usb_card(FakeSystem(tmp_path / "small"), size=str(1 << 20)).done()  # 512 MiB
    assert refused(node, small) == f"{node} is too small: 512.0 MiB for a 600.0 MiB image"


def test_regular_files_and_missing_devices(tmp_path: Path) -> None:
    root = FakeSystem(tmp_path / "root").done()
    new = describe(tmp_path / "new.img", system_root=root)
    assert isinstance(new, FileDestination) and new.refusal(1 << 30) is None
    with pytest.raises(UserError, match="/dev/pifleet-missing: no such device or file"):
        describe(Path("/dev/pifleet-missing"), system_root=root)
    with pytest.raises(UserError, match="not a block device or regular file"):
        describe(Path("/dev/null"), system_root=root)


def test_two_nodes_of_one_disk_are_refused_as_two_targets(tmp_path: Path, node: Path) -> None:
    """/dev/sdb and a second node of the same major:minor (as /dev/disk/by-id links are, but
    not a symlink: same_file cannot see it) are one card, refused before anything is written."""
    from builder.fleet.flashing import judged

    root = usb_card(FakeSystem(tmp_path / "root")).done()
    twin = tmp_path / "dev-card-twin"
    os.mknod(twin, 0o600 | stat.S_IFBLK, os.makedev(240, 0))
    block_map = bmap.BlockMap(size=600 * 1024 * 1024, sha256="", ranges=())
    image = tmp_path / "image.img"
    with pytest.raises(UserError, match=r"dev-card-twin \(target 2\): the same disk as target 1"):
        judged([node, twin], image, None, {}, block_map, root)
