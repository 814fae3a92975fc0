#!/usr/bin/env python3
"""Benchmark the first-boot agent's start-up cost on the device's python3.

Prints the wall time of `python3 -m firstboot run` up to its first console
line (import + config load), the time of a whole join against the K3s test
server, and the agent's peak RSS (issue 3 target: < 25 MiB).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.testserver.server import K3sTestServer  # noqa: E402
from tests.agent_helpers import agent_env, make_device, stop_services  # noqa: E402


def one_join(python: str) -> tuple[float, float, int]:
    """(seconds to first line, seconds to exit, peak RSS KiB) for one join."""
    with K3sTestServer() as server, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "device"
        make_device(root, server, server.mint_token())
        start = time.monotonic()
        # Through /usr/bin/time: a child forked from this (large) process would start with
        # this process's peak RSS on record, so the agent is started from a tiny one.
        proc = subprocess.Popen(
            [
                "/usr/bin/time",
                "-f",
                "pifleet-rss %M",
                python,
                "-m",
                "firstboot",
                "run",
                "--root",
                str(root),
            ],
            env=agent_env(),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        assert proc.stderr is not None
        proc.stderr.readline()
        first = time.monotonic() - start
        rest = proc.stderr.read().decode()
        code = proc.wait()
        total = time.monotonic() - start
        stop_services(root)
        if code != 0:
            raise SystemExit("the agent did not join:\n" + rest)
        rss = int(rest.rsplit("pifleet-rss ", 1)[1].split()[0])
        return first, total, rss


def main() -> None:
    python = sys.argv[1] if len(sys.argv) > 1 else "python3"
    runs = [one_join(python) for _ in range(5)]
    version = subprocess.run([python, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"interpreter         {python} ({version})")
    print(
        f"import + start      {statistics.median(r[0] for r in runs) * 1000:.0f} ms (median of 5, to the first state line)"
    )
    print(
        f"whole join          {statistics.median(r[1] for r in runs):.2f} s (test server on 127.0.0.1, K3s stand-in)"
    )
    print(
        f"peak RSS            {max(r[2] for r in runs) / 1024:.1f} MiB (target < 25; the agent process)"
    )


if __name__ == "__main__":
    main()
