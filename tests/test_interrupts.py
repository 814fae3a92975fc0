"""Interrupted host commands (issue 14, item 5): SIGINT and SIGKILL at random moments of
`build`, `build --per-device`, `personalize`, `fetch` and `flash` to a file.

After every trial:
- an output under its final name is whole: it equals what an uninterrupted run made
  (the build is reproducible), and every SHA256SUMS matches the files it lists;
- after SIGINT nothing temporary is left, in the work folder or in TMPDIR;
- after SIGKILL the next run of the same command cleans what the killed one left and
  succeeds;
- the base image and the download cache are untouched and still verify.

The trials draw their moments from one seed, printed (and named in every failure), so a
failure can be replayed with PIFLEET_TRIAL_SEED=<seed>: FIXED_SEED in the default run
(DEFAULT_TRIALS per signal), a new random seed under `faults` (TRIALS_PER_SIGNAL).

`build --per-device` is all or nothing even under SIGKILL (issue 21, item 6): killed at
fixed points (while the golden image's outputs are written, at the second device, in the
middle of the commit's renames) into a fresh folder, it leaves no output under a final
name unless the run had committed; a committed run killed while renaming is finished by
the next run in that folder. More such kills, at random moments, run under `faults`.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.fleet.ledger import NAME as LEDGER
from builder.fleet.ledger import Ledger
from tests.conftest import REPO, TEST_TOKEN, fleet_yaml
from tests.http_fixture import AssetServer
from tests.image_read import sha256
from tests.layouts import LAYOUTS, make_pi_image
from tests.station_helpers import fleet_copy, four_devices

__all__ = ["fleet_copy", "four_devices"]  # fixtures of the station's tests
TRIALS_PER_SIGNAL = 20  # under `faults`, from a random seed
DEFAULT_TRIALS = 5  # per signal in the default run, from FIXED_SEED
FIXED_SEED = 1546936233  # the seed that once found a leftover temporary (commit edd88f3)
DEVICES = "devices:\n" + "".join(f"  - hostname: edge-00{i}\n" for i in range(1, 4))
COMMANDS: dict[str, tuple[str, ...]] = {
    "build": ("build", "fleet.yaml"),
    "per-device": ("build", "fleet.yaml", "--per-device", "-o", "fleet-out"),
    "personalize": ("personalize", "golden.img", "--config", "fleet.yaml", "--device", "edge-002",
                    "-o", "dev/edge-002.img"),
    "fetch": ("fetch", "fetch.yaml"),
    "flash": ("flash", "golden.img", "card.img", "--yes", "--config", "fleet.yaml",
              "--device", "edge-001"),
}  # fmt: skip
TEMP = re.compile(
    r"(^\..+\.pifleet-[0-9]+\.tmp$)|(^\.build-[0-9]+$)|(\.part$)|(^\.pifleet-run-[0-9]+$)"
)


def staged(path: Path, top: Path) -> bool:
    """Whether `path` is temporary: a temporary name, or inside a run's staging folder."""
    return any(TEMP.search(part) for part in path.relative_to(top).parts)


@dataclass
class Bench:
    work: Path
    cache: Path
    tmpdir: Path
    base_sha: str
    reference: dict[str, str]  # final output (relative path) -> sha256 of an uninterrupted run
    seconds: dict[str, float]  # command -> how long an uninterrupted run took

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO), "PIFLEET_CACHE": str(self.cache),
                "TMPDIR": str(self.tmpdir), "PIFLEET_TOKEN": TEST_TOKEN}  # fmt: skip

    def start(self, command: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "builder", *COMMANDS[command]],
            cwd=self.work, env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    def run(self, command: str) -> float:
        began = time.monotonic()
        proc = self.start(command)
        _out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{command}: {err.decode()[-2000:]}"
        return time.monotonic() - began

    def run_args(self, *args: str) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "builder", *args], cwd=self.work, env=self.env(),
            capture_output=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]

    def outputs(self) -> dict[str, Path]:
        """Every final-named output there is now (not temporary, not an input)."""
        found = {}
        for folder in ("out", "fleet-out", "dev"):
            for path in (self.work / folder).rglob("*") if (self.work / folder).exists() else ():
                ledger = path.name == LEDGER or path.parent.name == LEDGER + ".claims"
                if path.is_file() and not staged(path, self.work) and not ledger:
                    found[str(path.relative_to(self.work))] = path
        if (self.work / "card.img").exists():
            found["card.img"] = self.work / "card.img"
        return found

    def leftovers(self) -> list[str]:
        left = [str(p) for p in self.work.rglob("*") if staged(p, self.work)]
        left += [str(p) for p in self.tmpdir.iterdir()]
        return sorted(left)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    root = tmp_path_factory.mktemp("interrupts")
    work, cache, tmpdir = root / "work", root / "cache", root / "tmp"
    for d in (work, cache, tmpdir, work / "dev"):
        d.mkdir()
    base = make_pi_image(work / "base.img", LAYOUTS["trixie"], "arm64")
    (work / "token").write_text(TEST_TOKEN + "\n")
    (work / "token").chmod(0o600)
    (work / "fleet.yaml").write_text(fleet_yaml(devices=DEVICES, output="output: {dir: out}"))
    packed = lzma.compress(base.read_bytes(), preset=0)
    with AssetServer(files={"/base.img.xz": packed}) as assets:
        url = f"{assets.url}/base.img.xz"
        fetch = fleet_yaml(
            base=f"base: {{url: '{url}', sha256: {hashlib.sha256(packed).hexdigest()}}}"
        )
        (work / "fetch.yaml").write_text(fetch)
        b = Bench(work, cache, tmpdir, sha256(base), {}, {})
        b.seconds["build"] = b.run("build")
        shutil.copyfile(work / "out" / "edge-fleet.img", work / "golden.img")
        for command in ("per-device", "personalize", "fetch", "flash"):
            b.seconds[command] = b.run(command)
        b.reference = {name: sha256(path) for name, path in b.outputs().items()}
        yield b


def check_whole(b: Bench, seed: int, trial: str) -> None:
    where = f"seed {seed}, {trial}"
    for name, path in b.outputs().items():
        if name == "card.img":  # written in place by design: checked after a completed run
            continue
        assert name in b.reference, f"{where}: unexpected output {name}"
        assert sha256(path) == b.reference[name], f"{where}: {name} is not whole"
    for sums in b.work.rglob("SHA256SUMS"):
        for line in sums.read_text().splitlines():
            digest, _, name = line.partition("  ")
            listed = sums.parent / name.lstrip("*")
            assert listed.exists(), f"{where}: {sums} lists {name}, which is missing"
            assert sha256(listed) == digest, f"{where}: {sums} does not match {name}"
    ledger = b.work / "out" / LEDGER  # an append log, not a whole-or-nothing output
    if ledger.exists():
        rows = Ledger(ledger).rows()  # every row whole (a torn last line is no row)
        assert all(r.outcome in ("ok", "failed", "interrupted") for r in rows), f"{where}: {rows}"
    assert sha256(b.work / "base.img") == b.base_sha, f"{where}: the base changed"
    for entry in (b.cache / "downloads" / "sha256").glob("*/*"):
        assert sha256(entry) == entry.parent.name, f"{where}: cache entry {entry} is corrupt"


SIGNALS = pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])


@SIGNALS
def test_interrupted_commands_leave_nothing_half_done(bench: Bench, sig: signal.Signals) -> None:
    """The default run: DEFAULT_TRIALS per signal from a fixed seed, the same moments every
    run (PIFLEET_TRIAL_SEED replays another seed)."""
    trials(bench, sig, int(os.environ.get("PIFLEET_TRIAL_SEED", FIXED_SEED)), DEFAULT_TRIALS)


@pytest.mark.faults
@SIGNALS
def test_interrupted_at_random_moments(bench: Bench, sig: signal.Signals) -> None:
    """TRIALS_PER_SIGNAL per signal from a new random seed each run (bench/faults.py)."""
    seed = int(os.environ.get("PIFLEET_TRIAL_SEED", random.SystemRandom().randrange(1 << 32)))
    trials(bench, sig, seed, TRIALS_PER_SIGNAL)


def trials(bench: Bench, sig: signal.Signals, seed: int, count: int) -> None:
    """`count` commands, each interrupted by `sig` at a moment drawn from `seed`."""
    print(f"trial seed {seed} (replay: PIFLEET_TRIAL_SEED={seed})")
    rng = random.Random(seed + sig)
    for trial in range(count):
        command = rng.choice(sorted(COMMANDS))
        delay = rng.uniform(0.1, max(0.2, bench.seconds[command] * 0.95))
        name = f"trial {trial}: {sig.name} {command} after {delay:.2f} s"
        proc = bench.start(command)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
        proc.communicate(timeout=120)
        check_whole(bench, seed, name)
        if sig == signal.SIGINT:
            assert bench.leftovers() == [], f"seed {seed}, {name}: left {bench.leftovers()}"
        else:
            bench.run(command)  # the next run cleans up after the killed one and succeeds
            assert bench.leftovers() == [], f"seed {seed}, {name}: left {bench.leftovers()}"
            check_whole(bench, seed, name + " then rerun")
            if command == "flash":
                assert sha256(bench.work / "card.img") == bench.reference["card.img"]


# SIGKILL of the whole process at a fixed point: the Nth call of `module:function`, or the
# Nth rename out of a run's staging folder once the run has committed ("commit:N").
_KILLER = """
import importlib, os, signal, sys
point, count = sys.argv[1].rsplit(":", 1)
calls = []
def kill_on_call():
    calls.append(1)
    if len(calls) == int(count):
        os.kill(os.getpid(), signal.SIGKILL)
if point == "commit":
    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        parts = str(src).split("/.pifleet-run-", 1)
        if len(parts) == 2 and os.path.exists(parts[0] + "/.pifleet-run-"
                                              + parts[1].split("/")[0] + "/COMMITTED"):
            kill_on_call()
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace
else:
    module, name = point.split(":")
    owner = importlib.import_module(module)
    real = getattr(owner, name)
    def killed(*args, **kwargs):
        kill_on_call()
        return real(*args, **kwargs)
    setattr(owner, name, killed)
from builder.cli import main
raise SystemExit(main(sys.argv[2:]))
"""
KILL_POINTS = {
    "golden-outputs": "builder.outputs.artifacts:manifest:1",  # image, .bmap, OS list staged
    "second-device": "builder.fleet.personalize:personalize_copy:2",
    "mid-commit": "commit:3",  # three entries renamed into place, the rest not yet
}


def final_names(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if not staged(p, out))


def whole_run(out: Path) -> list[str]:
    """What one completed `--per-device` run of the bench's fleet leaves (3 devices)."""
    names = ["SHA256SUMS", "devices", "known_hosts", "manifest.json"]
    names += [f"edge-fleet.{x}" for x in ("img", "img.bmap", "rpi-imager-manifest", "spdx.json")]
    for i in range(1, 4):
        names += [f"edge-00{i}.img", f"devices/edge-00{i}"]
        names += [f"devices/edge-00{i}/{f}" for f in ("node-password", "ssh_host_ed25519_key",
                                                       "ssh_host_ed25519_key.pub")]  # fmt: skip
    return sorted(names)


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_per_device_killed_leaves_all_or_nothing(bench: Bench, point: str, tmp_path: Path) -> None:
    from builder.util.batch import recover

    out = tmp_path / "fresh-out"
    args = ["build", "fleet.yaml", "--per-device", "-o", str(out)]
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, KILL_POINTS[point], *args],
        cwd=bench.work, env=bench.env(), capture_output=True,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    committed = list(out.glob(".pifleet-run-*/COMMITTED"))
    if point == "mid-commit":
        assert committed, final_names(out)
    else:
        assert final_names(out) == [], f"{point}: outputs appeared before the run completed"
        assert not committed
    recover(out)  # what the next pifleet run writing into the folder does first
    assert final_names(out) == (whole_run(out) if committed else [])
    assert not any(staged(p, out) for p in out.rglob("*")), "the staging was not cleaned"
    if committed:
        for line in (out / "SHA256SUMS").read_text().splitlines():
            digest, _, name = line.partition("  ")
            assert sha256(out / name) == digest, name
    else:
        bench.run_args(*args)  # the next run succeeds
        assert final_names(out) == whole_run(out)
    assert sha256(bench.work / "base.img") == bench.base_sha


@pytest.mark.faults
def test_per_device_killed_at_random_moments_leaves_all_or_nothing(
    bench: Bench, tmp_path: Path
) -> None:
    from builder.util.batch import recover

    seed = int(os.environ.get("PIFLEET_TRIAL_SEED", random.SystemRandom().randrange(1 << 32)))
    print(f"trial seed {seed} (replay: PIFLEET_TRIAL_SEED={seed})")
    rng = random.Random(seed)
    for trial in range(TRIALS_PER_SIGNAL):
        out = tmp_path / f"out-{trial}"
        delay = rng.uniform(0.1, bench.seconds["per-device"] * 1.1)
        proc = subprocess.Popen(
            [sys.executable, "-m", "builder", "build", "fleet.yaml", "--per-device", "-o", str(out)],
            cwd=bench.work, env=bench.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.wait()
        where = f"seed {seed}, trial {trial}: SIGKILL after {delay:.2f} s"
        found = final_names(out) if out.exists() else []
        committed = out.exists() and list(out.glob(".pifleet-run-*/COMMITTED"))
        assert found == [] or committed or found == whole_run(out), f"{where}: {found}"
        if out.exists():
            recover(out)
            assert final_names(out) in ([], whole_run(out)), where


# --- the flashing station and several cards (issue 25) ----------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_station_finishes_the_card_in_progress(
    fleet_copy: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    """The card is written, verified and personalized, and waits to be recorded (a second
    station holds the ledger) when the signal comes: it is still finished and recorded."""
    from builder.fleet.ledger import Ledger
    from tests.fake_sysfs import FakeSystem, usb_reader
    from tests.station_helpers import SECTORS, hostname_of, ledger_held, running

    system = FakeSystem(tmp_path / "root")
    system.done()
    ledger = fleet_copy / "out/flash-ledger.csv"
    with running(fleet_copy, system.root) as station:
        with ledger_held(ledger):
            card = usb_reader(system, 0, SECTORS, "IN-PROGRESS")
            station.wait_for(r"edge-001 .*writing")
            time.sleep(1.5)  # written, verified, personalized: now waiting for the ledger
            station.proc.send_signal(sig)
            station.wait_for("station: stopping; finishing 1 round")
        station.wait_for(r"edge-001 .*done: remove the card")
        code = station.finish()
    assert code == 0, station.output()
    assert [(r.device, r.serial, r.outcome) for r in Ledger(ledger).rows()] == [
        ("edge-001", "IN-PROGRESS", "ok")
    ]
    assert hostname_of(card) == "edge-001"


def test_a_second_ctrl_c_abandons_the_card_and_the_ledger_does_not_claim_it(
    fleet_copy: Path, tmp_path: Path
) -> None:
    from builder.fleet.ledger import Ledger
    from tests.fake_sysfs import FakeSystem, usb_reader
    from tests.station_helpers import SECTORS, ledger_held, running

    system = FakeSystem(tmp_path / "root")
    system.done()
    ledger = fleet_copy / "out/flash-ledger.csv"
    with running(fleet_copy, system.root) as station, ledger_held(ledger):
        usb_reader(system, 0, SECTORS, "ABANDONED")
        station.wait_for(r"edge-001 .*writing")
        station.proc.send_signal(signal.SIGINT)
        station.wait_for("station: stopping")
        began = time.monotonic()
        station.proc.send_signal(signal.SIGINT)
        code = station.finish(30)
        took = time.monotonic() - began
    assert code == 130, station.output()
    assert took < 10, f"the second Ctrl-C took {took:.0f} s to stop the station"
    assert Ledger(ledger).flashed(sha256(fleet_copy / "out/edge-fleet.img")) == set()


def test_a_station_killed_then_restarted_the_ledger_and_the_cards_agree(
    fleet_copy: Path, tmp_path: Path
) -> None:
    """SIGKILL with one card recorded and one written but waiting to be recorded (a second
    station holds the ledger): the unrecorded card is not claimed by the ledger, its device's
    claim died with the run, and the restarted station gives that device to the next card
    (the killed card, still in its reader, was there before the restart: left alone)."""
    from builder.fleet.ledger import Ledger
    from tests.fake_sysfs import FakeSystem, push_card, usb_reader
    from tests.station_helpers import SECTORS, hostname_of, ledger_held, running

    system = FakeSystem(tmp_path / "root")
    system.done()
    ledger_path = fleet_copy / "out/flash-ledger.csv"
    with running(fleet_copy, system.root) as station:
        first = usb_reader(system, 0, SECTORS, "RECORDED")
        station.wait_for(r"edge-001 .*done")
        with ledger_held(ledger_path):
            second = usb_reader(system, 1, SECTORS, "UNRECORDED")
            station.wait_for(r"edge-002 .*writing")
            time.sleep(1.5)  # written, verified and personalized: waiting for the ledger
            station.proc.kill()
            station.proc.wait(30)
    assert [(r.device, r.serial) for r in Ledger(ledger_path).rows()] == [("edge-001", "RECORDED")]
    with running(fleet_copy, system.root) as station:
        time.sleep(1.2)  # two looks: the killed card, still in, is no new card
        push_card(system, "sdc", SECTORS, "REPLACEMENT")
        station.wait_for(r"edge-002 .*done")
        assert "UNRECORDED" not in station.output()
        code = station.stop(signal.SIGINT)
    assert code == 0, station.output()
    ok = [(r.device, r.serial) for r in Ledger(ledger_path).rows() if r.outcome == "ok"]
    assert ok == [("edge-001", "RECORDED"), ("edge-002", "REPLACEMENT")]
    assert (hostname_of(first), hostname_of(second)) == ("edge-001", "edge-002")


def test_several_cards_killed_then_resumed_the_ledger_and_the_cards_agree(
    fleet_copy: Path,
) -> None:
    """SIGKILL as soon as the first of three cards is announced done (the others anywhere
    from writing to recorded): every `ok` row names a card that is whole and is that device;
    the next run flashes exactly the devices with no `ok` row, and the killed run's temporary
    copies go."""
    from builder.fleet.ledger import Ledger
    from tests.station_helpers import hostname_of

    ledger = Ledger(fleet_copy / "out/flash-ledger.csv")
    argv = [sys.executable, "-m", "builder", "flash", "out/edge-fleet.img", "a.img", "b.img",
            "c.img", "--config", "fleet.yaml", "--yes"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, cwd=fleet_copy, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if ": done" in line:
            proc.kill()  # the first card is recorded; the others are on their way
            break
    proc.wait(30)
    rows = [r for r in ledger.rows() if r.outcome == "ok"]
    assert rows, "the first card was announced done before its row was written"
    for r in rows:
        card = fleet_copy / r.card
        assert card.exists() and hostname_of(card) == r.device, r
    done = {r.device for r in rows}
    targets = [f"new-{n}.img" for n in range(4 - len(done))]
    resumed = subprocess.run([*argv[:5], *targets, *argv[8:]], cwd=fleet_copy, env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    ok = {r.device: r.card for r in ledger.rows() if r.outcome == "ok"}
    assert sorted(ok) == ["edge-001", "edge-002", "edge-003", "edge-004"]
    assert {ok[d] for d in ok if d not in done} == set(targets), "a device flashed twice"
    left = [p.name for p in fleet_copy.iterdir() if TEMP.search(p.name)]
    assert left == [], f"temporary copies of the killed run were left: {left}"
