#!/usr/bin/env python3
"""A join storm: N first-boot agents power on at the same moment against one K3s test server
with K3s-like admission limits (--limit requests in flight, the rest 429 + Retry-After: 1;
each admitted request held --service-time s). Prints, with jitter and without:
time until all joined, p50/p99 per agent, the server's peak in-flight count, refusals,
slot utilisation and requests per agent; then 10,000 agents in simulated time.

What runs for real: the first-boot agent's code (firstboot.machine.Agent, its Backoff and
Retry-After handling, its state file and K3s config files) for every agent, each on its own
device root (tests/agent_helpers.make_device), as threads in --workers processes; the K3s
test server (real TLS on 127.0.0.1) in this process. What stands in for K3s: in the `start`
state each agent makes, in its thread, the requests tests/fixtures/k3s-standin makes (config,
CA bundles, the serving/client kubelet CSR posts with node name/password headers, then the
kubelet's Node POST + GET), with K3s's retry periods scaled by --period (K3s: 5 s).
See tests/storm_agents.py. The 10,000-agent figures are a discrete-event simulation
(bench/storm_sim.py) of the same admission limit and the same retry policies.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.storm_sim import Policy, SimResult, percentile, simulate  # noqa: E402
from builder.testserver.server import K3sTestServer  # noqa: E402
from tests.agent_helpers import make_device  # noqa: E402
from tests.storm_agents import Outcome, run_storm, storm_join_config  # noqa: E402

SIZING_LIMITS = (10, 20, 40, 80, 160)


def worker(args: argparse.Namespace) -> int:
    """One worker process: agents [first, last) of the storm, as threads; JSON out."""
    roots = [Path(args.dir) / f"d{i:05d}" for i in range(args.first, args.last)]
    time.sleep(max(0.0, args.start_at - time.time()))
    latencies: list[tuple[int, float]] = []
    outcomes = run_storm(
        args.url,
        roots,
        first_index=args.first,
        jitter=not args.no_jitter,
        period=args.period,
        deadline=args.deadline,
        latencies=latencies,
    )
    json.dump({"outcomes": [asdict(o) for o in outcomes], "latencies": latencies}, sys.stdout)
    return 0


def storm(args: argparse.Namespace, jitter: bool, deadline: float) -> dict[str, float]:
    """One real storm against a fresh server; its figures."""
    n = args.agents
    with (
        K3sTestServer(max_inflight=args.limit, service_time=args.service_time) as server,
        tempfile.TemporaryDirectory(prefix="pifleet-storm-") as tmp,
    ):
        token = server.mint_token("node")
        join = storm_join_config(server.url)
        for i in range(n):
            make_device(Path(tmp) / f"d{i:05d}", server, token, hostname=f"edge-{i:05d}", join=join)
        start_at = time.time() + 2.0 + 0.5 * args.workers
        cuts = [n * w // args.workers for w in range(args.workers + 1)]
        procs = [
            subprocess.Popen(_worker_cmd(args, server.url, tmp, cuts[w : w + 2], start_at,
                                         jitter, deadline), stdout=subprocess.PIPE)
            for w in range(args.workers)
        ]  # fmt: skip
        replies = [json.loads(p.communicate()[0]) for p in procs]
        outcomes = [Outcome(**o) for reply in replies for o in reply["outcomes"]]
        refused_rtt = [t for reply in replies for code, t in reply["latencies"] if code == 429]
        wall = time.time() - start_at
        stats = server.admission.stats()
        nodes = server.registered_nodes()
        requests = len(server.requests)
    joined = [o.joined for o in outcomes if o.joined is not None]
    return {
        "agents": n,
        "joined": len(joined),
        "nodes": len(nodes),
        "distinct": len(set(nodes)),
        "end": max(joined) if len(joined) == n else wall,
        "p50": statistics.median(joined) if joined else float("nan"),
        "p99": percentile(joined, 0.99) if joined else float("nan"),
        "verified_end": max((o.verified or wall) for o in outcomes),
        "peak": stats.peak,
        "limit": stats.limit,
        "refused": stats.refused,
        "admitted": stats.admitted,
        "slot": stats.busy_seconds / max(stats.admitted, 1),
        "util": stats.busy_seconds / (stats.limit * max(wall, 1e-9)),
        "per_agent": requests / n,
        "errors": sum(1 for o in outcomes if o.error and o.error != "deadline"),
        "overhead": statistics.median(refused_rtt) if refused_rtt else 0.0,
    }


def _worker_cmd(
    args: argparse.Namespace,
    url: str,
    tmp: str,
    cut: list[int],
    start_at: float,
    jitter: bool,
    deadline: float,
) -> list[str]:
    command = [sys.executable, __file__, "--worker", url, tmp, str(cut[0]), str(cut[1])]
    command += [str(start_at), "--period", str(args.period), "--deadline", str(deadline)]
    return command + ([] if jitter else ["--no-jitter"])


def show_real(label: str, r: dict[str, float]) -> None:
    n = int(r["agents"])
    done = f"all {n} joined in {r['end']:.1f} s" if r["joined"] == n else (
        f"{int(r['joined'])} of {n} joined when stopped at {r['end']:.0f} s"
    )  # fmt: skip
    print(f"{label}: {done}")
    print(
        f"  per agent      p50 {r['p50']:.1f} s, p99 {r['p99']:.1f} s; last verify at {r['verified_end']:.1f} s"
    )
    print(
        f"  server         peak in flight {int(r['peak'])} (limit {int(r['limit'])}), refused {int(r['refused'])} (429), admitted {int(r['admitted'])}"
    )
    print(
        f"  server         slots busy {100 * r['util']:.0f}% of the storm; mean slot held {1000 * r['slot']:.0f} ms"
    )
    print(f"  requests/agent {r['per_agent']:.1f} (all, /cacerts and 429s included)")
    print(
        f"  client side    a refused request took {1000 * r['overhead']:.0f} ms (median; TLS + CPU)"
    )
    print(
        f"  Nodes          {int(r['nodes'])} at the apiserver, {int(r['distinct'])} distinct; agent errors {int(r['errors'])}"
    )


def show_sim(label: str, n: int, r: SimResult, policy: Policy) -> None:
    print(
        f"{label}: {n} agents, all joined at {r.end:.0f} s (p50 {percentile(r.joined, 0.5):.0f} s,"
        f" p99 {percentile(r.joined, 0.99):.0f} s); peak {r.peak}/{policy.limit}, refused {r.refused},"
        f" slots busy {100 * r.busy / (policy.limit * r.end):.0f}%, requests/agent {r.requests / n:.1f}"
    )


def simulated(args: argparse.Namespace, slot: float, overhead: float) -> None:
    base = Policy(limit=args.limit, service=slot, period=args.period, overhead=overhead)
    print(
        f"\nsimulated (same limit and policies; slot {1000 * slot:.0f} ms and client overhead"
        f" {1000 * overhead:.0f} ms a request, as measured above)"
    )
    show_sim("  sim, jitter   ", args.agents, simulate(args.agents, base), base)
    fleet = replace(base, overhead=args.sim_overhead)
    print(f"{args.sim_agents} agents, client overhead {1000 * args.sim_overhead:.0f} ms a request:")
    for jitter in (True, False):
        label = "  sim, jitter   " if jitter else "  sim, no jitter"
        policy = replace(fleet, jitter=jitter)
        show_sim(label, args.sim_agents, simulate(args.sim_agents, policy), policy)
    print(
        f"\nserver sizing for {args.sim_agents} agents at {1000 * slot:.0f} ms a request (simulated):"
    )
    for limit in SIZING_LIMITS:
        policy = replace(fleet, limit=limit)
        r = simulate(args.sim_agents, policy)
        print(f"  {limit:4d} in flight ({limit / slot:5.0f} req/s): all joined at {r.end:5.0f} s,"
              f" p99 {percentile(r.joined, 0.99):5.0f} s, refused {r.refused}, slots busy {100 * r.busy / (limit * r.end):.0f}%")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--limit", type=int, default=10, help="server max in flight (K3s: 10 mutating)")
    p.add_argument("--service-time", type=float, default=0.05)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--period", type=float, default=1.0, help="the K3s stand-in's retry period")
    p.add_argument("--deadline", type=float, default=900.0)
    p.add_argument("--contrast-deadline", type=float, default=180.0, help="jitter off: stop then")
    p.add_argument("--sim-agents", type=int, default=10000)
    p.add_argument("--sim-only", action="store_true")
    p.add_argument(
        "--sim-overhead",
        type=float,
        default=0.0,
        help="client cost a request in the 10,000 simulation (default 0: the server's view)",
    )
    p.add_argument("--no-jitter", action="store_true")
    p.add_argument("--worker", nargs=5, metavar=("URL", "DIR", "FIRST", "LAST", "START_AT"))
    args = p.parse_args()
    if args.worker:
        url, directory, first, last, start_at = args.worker
        args.url, args.dir, args.first, args.last = url, directory, int(first), int(last)
        args.start_at = float(start_at)
        return worker(args)
    slot, overhead = args.service_time, 0.0
    if not args.sim_only:
        print(f"join storm: {args.agents} agents, server limit {args.limit} in flight, "
              f"service {1000 * args.service_time:.0f} ms, Retry-After 1 s, {args.workers} worker processes")  # fmt: skip
        real = storm(args, True, args.deadline)
        show_real("jitter on ", real)
        show_real("jitter off", storm(args, False, args.contrast_deadline))
        slot, overhead = real["slot"], real["overhead"]
    simulated(args, slot, overhead)
    return 0


if __name__ == "__main__":
    sys.exit(main())
