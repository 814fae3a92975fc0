"""`pifleet demo`: the README's main job, offline, on the bundled example.

  1. `pifleet base`: a QEMU-bootable base laid out like Raspberry Pi OS Trixie (cached), for
     the example's architecture or `--arch` (and `--suite`, for armhf: bookworm, see README);
  2. `pifleet build config/example.yaml` on it, with the K3s test stand-in as K3s;
  3. `pifleet personalize` the first device of the example (its seed names it);
  4. `pifleet boot-test` of that device image against the K3s test server: "joined".

The K3s test server's state lives in the output directory, so the token the
image is built with is the one the booted device presents. The bundled example
and the stand-in come from the installed package (builder/data/), so the demo
runs from a wheel as from a checkout; its output goes to ./out unless -o says.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
from pathlib import Path

from builder import build
from builder.bases import debian as base
from builder.config.fleet import load
from builder.config.model import FleetConfig
from builder.fleet import personalize, status
from builder.plan import resolve
from builder.qemu import boottest
from builder.testserver.server import K3sTestServer
from builder.util import bundled
from builder.util.errors import PifleetError

log = logging.getLogger("pifleet.demo")


def inputs(
    config_file: str | None, output_dir: str | None
) -> tuple[FleetConfig, Path | None, Path]:
    """The fleet config the demo builds, the K3s binary that overrides its own, the output dir.

    The bundled example names the stand-in relative to a checkout (../tests/fixtures/), which
    an installed pifleet does not have: for it the stand-in is the package's own copy and the
    output goes to ./out, never into the installed package.
    """
    if config_file:
        config = load(Path(config_file))
        return config, None, (Path(output_dir) if output_dir else config.output.dir).resolve()
    config = load(bundled.data("example.yaml"))
    return config, bundled.data("k3s-standin"), Path(output_dir or "out").resolve()


def command(args: argparse.Namespace) -> int:
    config, k3s_binary, out = inputs(args.config, args.output_dir)
    if args.arch and args.arch != config.arch:
        config = dataclasses.replace(config, arch=args.arch)
    print(
        f"[1/4] base image for {config.arch}, Debian {args.suite} (built once, then cached)",
        flush=True,
    )
    base_image = base.ensure_base(config.arch, args.suite)
    out.mkdir(parents=True, exist_ok=True)
    server_state = out / "k3s-test-server"
    with K3sTestServer(state_dir=server_state) as server:
        token = server.mint_token()
    os.environ[config.cluster.token_env or "PIFLEET_TOKEN"] = token
    print(f"[2/4] pifleet build {config.source}", flush=True)
    plan = resolve(config, base_override=base_image, k3s_override=k3s_binary, output_dir=out)
    golden = build.build(plan)[0].path
    device = config.devices[0]
    print(f"[3/4] pifleet personalize --device {device.hostname}", flush=True)
    device_image = out / f"{device.hostname}.img"
    personalize.personalize_copy(
        golden, device_image, config, device, personalize.secrets_for(config, device)
    )
    print(f"[4/4] pifleet boot-test {device_image}", flush=True)
    opts = boottest.BootOptions(image=device_image, timeout=args.timeout, server_state=server_state)

    def milestone(name: str, seconds: float) -> None:
        print(f"{seconds:8.1f} s  {name}", flush=True)
        if name == "joined":  # the test server is up: what `pifleet status` shows now
            print(f"pifleet status --kubeconfig {server_state / 'kubeconfig.yaml'}", flush=True)
            with contextlib.suppress(PifleetError):
                status.show(config, server_state / "kubeconfig.yaml")

    result = boottest.boot_test(opts, on_milestone=milestone)
    if result.passed:
        print(
            f"joined: {result.node} registered with the K3s test server in {result.seconds:.0f} s"
        )
        return 0
    print(f"FAILED: {result.failure}")
    for line in result.tail():
        print(f"  | {line}")
    return 1
