"""`pifleet build`: base image -> golden fleet image, rootless, atomically.

The base is copied (reflink or sparse copy) into the run's staging folder inside the
output folder, customized there, checked, and renamed into place with its outputs (and
with --per-device every device's image and new identity) only when everything
succeeded (`builder.util.batch`). The base is opened read-only.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from builder import inspect, lint
from builder.config.fleet import load
from builder.detect.flavor import detect, require_supported
from builder.disk.image import Image, check_tool_path
from builder.disk.sparse import allocated_bytes, copy_file
from builder.disk.superblock import last_write_time
from builder.outputs import artifacts
from builder.plan import Plan, input_paths, resolve, source_date_epoch
from builder.sources.digests import sha256_of
from builder.steps import ORDER, check_base, prefetch
from builder.util.batch import Batch
from builder.util.console import human_size, progress
from builder.util.errors import BuildError, UserError
from builder.util.space import reported_full, require_space
from firstboot import joinconfig

log = logging.getLogger("pifleet.build")


def command(args: argparse.Namespace) -> int:
    """Build the golden image, and with --per-device every device's image: all or nothing
    (a failure, Ctrl-C or SIGKILL leaves no output of this run under its final name)."""
    config = load(Path(args.config))
    if args.per_device and not config.devices:
        raise UserError(f"{config.source}: devices: --per-device needs at least one device")
    out = (Path(args.output_dir) if args.output_dir else config.output.dir).resolve()
    with _removed_if_failed(out):
        plan = resolve(
            config,
            base_override=Path(args.base) if args.base else None,
            k3s_override=Path(args.k3s_binary) if args.k3s_binary else None,
            output_dir=out,
        )
        started = time.monotonic()
        protected = protected_inputs(plan)
        if args.per_device:
            from builder.fleet.personalize import check_fleet, personalize_fleet

            check_fleet(plan.image_path, config, out, protected)  # before the long part
        with Batch(out, protected) as batch:
            written = build_into(plan, batch)
            image = written[0]
            if args.per_device:
                assert image.staged is not None
                devices = list(config.devices)
                personalize_fleet(image.staged, config, devices, out, batch, image.sha256)
            batch.commit()
        log.info(
            "built %s (%s) in %.1f s",
            image.path,
            human_size(image.path.stat().st_size),
            time.monotonic() - started,
        )
        for w in written[1:]:
            log.info("  %s", w.path.name)
    return 0


@contextlib.contextmanager
def _removed_if_failed(out: Path) -> Iterator[None]:
    """The output folder and the parents this run creates are removed again, if still empty,
    when the build fails."""
    fresh = []
    for folder in (out, *out.parents):
        if folder.exists():
            break
        fresh.append(folder)
    try:
        yield
    except BaseException:
        for folder in fresh:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def protected_inputs(plan: Plan) -> dict[str, Path]:
    """What the build reads: no output of it may land on one of these."""
    from builder.fleet.servers import cluster_inputs

    inputs = {**input_paths(plan.config, plan.base.path), **cluster_inputs(plan.config)}
    if plan.k3s is not None:
        inputs["the K3s binary"] = plan.k3s.path
    for binary in plan.kubernetes:
        inputs[f"the {binary.role} binary"] = binary.path
    if plan.airgap is not None:
        inputs["the air-gap images"] = plan.airgap.path
    return inputs


def build(plan: Plan) -> list[artifacts.Written]:
    """Build the golden image for `plan`; returns the outputs written (in place)."""
    with Batch(plan.output_dir, protected_inputs(plan)) as batch:
        written = build_into(plan, batch)
        batch.commit()
    return written


def build_into(plan: Plan, batch: Batch) -> list[artifacts.Written]:
    """Build the golden image for `plan`, its outputs staged in `batch` (they appear when it
    commits); returns them."""
    check_tool_path(plan.image_path, "output: ")
    plan = examine_base(plan)
    # A sparse copy needs the base's data blocks (a reflink needs none: checked anyway).
    require_space(plan.output_dir, allocated_bytes(plan.base.path), plan.image_path.name)
    lint.ask_host_version()  # answers during the copy
    with (
        reported_full(plan.output_dir, plan.image_path.name),
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        tmp = batch.file(plan.image_path)
        # The base's digest is only for the manifest: hash it on the other core while copying.
        base_digest = pool.submit(sha256_of, plan.base.path) if plan.base.sha256 is None else None
        size = plan.base.path.stat().st_size
        log.info("copying base %s (%s)", plan.base.origin, human_size(size))
        with progress("copying base", size) as bar:
            copy_file(plan.base.path, tmp, bar.advance)
        image = customize(tmp, plan)
        # The checks only read, mostly waiting for small tools: they run while the image is
        # hashed, on the core the whole-image digest leaves free.
        with artifacts.hashing(tmp, pool) as scanned:
            check(image, plan)
            facts = inspect.collect(tmp, image, plan.flavor.as_detected())
        if base_digest is not None:
            plan = replace(plan, base=replace(plan.base, sha256=base_digest.result()))
        return artifacts.write_all(plan, tmp, facts, batch, scanned.result())


def examine_base(plan: Plan) -> Plan:
    """Check the base (read-only) before copying it; returns the plan with its flavor and epoch."""
    base = Image.open(plan.base.path)
    refuse_device_identity(base, plan.base.origin)
    flavor = detect(base)
    flavor = require_supported(flavor, Path(plan.base.origin), plan.config.seed.format)
    if (wrong_root := lint.root_problem(base)) is not None:
        raise UserError(f"{plan.base.origin}: {wrong_root}")
    log.info("base is %s (%s), seed format %s", flavor.pretty_name, flavor.arch, flavor.init_format)
    if flavor.arch != plan.config.arch:
        raise UserError(
            f"{plan.config.source}: arch: the config says {plan.config.arch} "
            f"but the base image is {flavor.arch}"
        )
    check_base(base, plan)
    epoch = source_date_epoch()
    if epoch is None:
        # Reproducible without SOURCE_DATE_EPOCH: the base's own last write, not the clock.
        epoch = last_write_time(plan.base.path, base.root_partition.start)
    return plan.for_image(flavor, epoch)


def refuse_device_identity(base: Image, origin: str) -> None:
    """A base must not carry a device's identity: every image built from it would."""
    folder = f"/{joinconfig.BOOT_SUBDIR}"
    names = {n.lower() for n in base.boot.listdir(folder)}
    for name, what in (
        (joinconfig.DEVICE_FILE, "a pifleet device identity"),
        (joinconfig.BOOT_NODE_PASSWORD_FILE, "a device's node password"),
        (joinconfig.BOOT_TOKEN_FILE, "a join token"),
    ):
        if name in names:
            raise UserError(
                f"{origin}: the base carries {what} ({folder}/{name} in its boot partition), "
                "as a personalized image does: build from a stock or golden image"
            )


def check(image: Image, plan: Plan) -> None:
    """`pifleet lint` on the built image: the first problem fails the build."""
    found = lint.image_problems(image, plan.k3s_standin, plan.flavor)
    for problem in found[1:]:
        log.error("%s", problem)
    if found:
        more = f" (and {len(found) - 1} more above)" if len(found) > 1 else ""
        raise BuildError(f"{plan.image_path.name}: {found[0]}{more}")


def customize(path: Path, plan: Plan) -> Image:
    """Apply every step to the image at `path` (a copy of the base); returns it, open."""
    image = Image.open(path, plan.epoch)
    prefetch(image, plan)
    for name, apply in ORDER:
        log.debug("step %s", name)
        apply(image, plan)
    image.commit(plan.config.output.size)
    image.root.check()
    return image
