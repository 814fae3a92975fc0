"""Everything written next to the image: SHA256SUMS, manifest.json, .bmap, compressed copies.

Each output is staged in the run's batch and appears, together with the image
(and with --per-device every device's), only when the whole run has succeeded
(see builder.util.batch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import firstboot
from builder import version
from builder.outputs import bmap, imager
from builder.plan import Plan
from builder.sources import compress
from builder.sources.obtain import Input
from builder.util.batch import Batch
from builder.util.console import progress
from builder.util.errors import BuildError

log = logging.getLogger("pifleet.output")


# Images carry the join token in their root filesystem: like every file holding a secret,
# they are readable by their owner only. So are their .bmap, manifest, OS list and
# SHA256SUMS: a build is reproducible, so a public digest of an image (or of one of its
# ranges) would confirm a guessed token or passphrase, one rebuild per guess.
PRIVATE_MODE = 0o600
SIDECAR = PRIVATE_MODE  # the image's own mode


@dataclass(frozen=True)
class Written:
    path: Path  # final name
    sha256: str
    staged: Path | None = None  # where it is until the run commits


@contextmanager
def hashing(image_tmp: Path, pool: ThreadPoolExecutor) -> Iterator[Future[bmap.BlockMap]]:
    """Scan the finished image (its sha256 and block map) in `pool` while the body runs.

    The body may only read the image. When it raises, the scan stops at its next chunk; on
    a normal exit this waits for the scan, with the progress bar.
    """
    stop = threading.Event()
    with progress("hashing image", image_tmp.stat().st_size) as bar:

        def advance(count: int) -> None:
            if stop.is_set():
                raise BuildError("the scan was stopped")  # only the body's error is shown
            bar.advance(count)

        scanned = pool.submit(bmap.scan, image_tmp, advance)
        try:
            yield scanned
            scanned.result()
        except BaseException:
            stop.set()
            raise


def write_all(
    plan: Plan, image_tmp: Path, facts: dict[str, Any], batch: Batch, result: bmap.BlockMap
) -> list[Written]:
    """Write every output for the image built at `image_tmp` (scanned as `result`), staged
    in `batch`.

    SHA256SUMS, written last, lists every other file written.
    """
    final = plan.image_path
    written = [Written(final, result.sha256, image_tmp)]
    if plan.config.output.bmap:
        written.append(_write(batch, final.with_name(final.name + ".bmap"), bmap.render(result)))
    compressed = [
        _compressed(plan, image_tmp, fmt, batch)
        for fmt in plan.config.output.formats
        if fmt != "img"
    ]
    written += compressed
    listing = _imager_manifest(plan, result, written)
    name = plan.config.name
    written.append(_write(batch, plan.output_dir / f"{name}.rpi-imager-manifest", listing))
    written.append(
        _write(
            batch,
            plan.output_dir / f"{name}.spdx.json",
            _sbom_document(plan, image_tmp, written[0].sha256),
        )
    )
    text = json.dumps(manifest(plan, facts, written), indent=2, sort_keys=True) + "\n"
    written.append(_write(batch, plan.output_dir / "manifest.json", text.encode()))
    sums = "".join(f"{w.sha256}  {w.path.name}\n" for w in written)
    _write(batch, plan.output_dir / "SHA256SUMS", sums.encode())
    return written


def _write(batch: Batch, final: Path, data: bytes) -> Written:
    """A small output about the image, staged for `final`, with the image's mode."""
    tmp = batch.file(final, SIDECAR)
    tmp.write_bytes(data)
    return Written(final, hashlib.sha256(data).hexdigest(), tmp)


def _imager_manifest(plan: Plan, result: bmap.BlockMap, written: list[Written]) -> bytes:
    """Imager's local manifest; its download is the .img.xz when there is one."""
    files = [
        imager.File(w.path, (w.staged or w.path).stat().st_size, w.sha256)
        for w in written
        if w.path.name.endswith((".img", ".img.xz", ".img.zst"))
    ]
    bmap_file = next((w.path for w in written if w.path.name.endswith(".bmap")), None)
    item = imager.entry(
        f"{plan.config.name} (pifleet)",
        f"{plan.config.name}: K3s fleet image built by pifleet {version()}",
        plan.config.arch,
        plan.flavor.init_format,
        imager.File(written[0].path, result.size, result.sha256),
        files,
        bmap_file,
        plan.epoch,
    )
    return imager.manifest(item)


def _compressed(plan: Plan, image_tmp: Path, fmt: str, batch: Batch) -> Written:
    final = plan.output_dir / f"{plan.config.name}.{fmt}"
    tmp = batch.file(final, PRIVATE_MODE)
    log.info("compressing %s", final.name)
    return Written(final, compress.compress(image_tmp, tmp, fmt), tmp)


def manifest(plan: Plan, facts: dict[str, Any], written: list[Written]) -> dict[str, Any]:
    """Inputs, versions and image facts; nothing secret (the token is described, not shown)."""
    facts = dict(facts)
    facts["image"] = {k: v for k, v in facts["image"].items() if k != "path"}
    return {
        "pifleet_version": version(),
        "agent_version": firstboot.__version__,
        "fleet": plan.config.name,
        "arch": plan.config.arch,
        "source_date_epoch": plan.epoch,
        "config": {"file": plan.config.source.name, "sha256": plan.config.config_hash},
        "inputs": [
            _input(i) for i in (plan.base, plan.k3s, plan.airgap, *plan.kubernetes) if i is not None
        ],
        "k3s_test_standin": plan.k3s_standin,
        "outputs": [{"file": w.path.name, "sha256": w.sha256} for w in written],
        **facts,
    }


def manifest_inputs(image: Path) -> dict[str, Path]:
    """The local files the manifest beside `image` names as its build's inputs (what -> path):
    a flash or personalization of `image` must not write onto its base."""
    try:
        found = json.loads((image.parent / "manifest.json").read_text())
        if not any(o.get("file") == image.name for o in found["outputs"]):
            return {}
        items = [(str(i["role"]), Path(i["origin"])) for i in found["inputs"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # no manifest, or not one pifleet wrote for this image: nothing to add
    return {f"the {role} {image.name} was built from": p for role, p in items if p.is_absolute()}


def _input(item: Input) -> dict[str, Any]:
    entry: dict[str, Any] = {"role": item.role, "origin": item.origin, "sha256": item.sha256}
    if item.version:
        entry["version"] = item.version
    return entry


def _sbom_document(plan: Plan, image: Path, sha256: str) -> Any:
    """The SBOM (imported here: its module is slow to import, and flashing never needs it)."""
    from builder.outputs import sbom

    return sbom.document(plan, image, sha256)
