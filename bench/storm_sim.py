"""A discrete-event simulation of a join storm, in simulated seconds: the same admission
limit as the K3s test server (builder/testserver/admission.py: `limit` requests in flight,
each held `service` seconds, the rest refused at once with Retry-After) and the same
retry policies as the real run (bench/join_storm.py):

  agent   firstboot's own Backoff (firstboot/retry.py, imported, not copied): the
          server's Retry-After first, the jittered exponential window on top;
          one attempt = GET /cacerts (no limit, as in K3s) + readyz (limited)
  k3s     the K3s stand-in's config.Get: config, client-ca, server-ca, two CSR posts,
          every 5-10 s scaled by `period` (K3s ignores Retry-After), then the kubelet's
          Node POST + GET, every 0.4 period (tests/fixtures/k3s-standin)

Network, TLS and client CPU are one figure, `overhead` per request (outside the slot),
which the real run measures; contention for the CPU is not modelled otherwise.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from firstboot.retry import Backoff

CONFIG_STEPS = 5  # config, client-ca.crt, server-ca.crt, serving- and client-kubelet.crt
NODE_STEPS = 2  # POST /api/v1/nodes, GET /api/v1/nodes/<name>


@dataclass(frozen=True)
class Policy:
    limit: int = 10
    service: float = 0.05
    retry_after: float = 1.0
    backoff_cap: float = 60.0
    period: float = 1.0  # the K3s stand-in's retry period (K3s itself: 5 s)
    jitter: bool = True
    overhead: float = 0.0  # per request outside the slot: TLS, client CPU, network


@dataclass
class SimResult:
    joined: list[float] = field(default_factory=list)  # per agent, simulated seconds
    verified: list[float] = field(default_factory=list)
    requests: int = 0  # every request, /cacerts included
    limited: int = 0  # requests that met the admission limit
    refused: int = 0
    peak: int = 0
    busy: float = 0.0  # slot-seconds
    end: float = 0.0


class _Agent:
    def __init__(self, policy: Policy) -> None:
        self.phase = "verify"
        self.step = 0
        self.backoff = Backoff(policy.backoff_cap, _no_sleep, jitter=policy.jitter)


def _no_sleep(_seconds: float) -> None:
    pass


def simulate(agents: int, policy: Policy, seed: int = 1) -> SimResult:
    """All `agents` power on at t=0; returns when every one has joined."""
    random.seed(seed)
    result = SimResult(joined=[0.0] * agents, verified=[0.0] * agents)
    state = [_Agent(policy) for _ in range(agents)]
    events: list[tuple[float, int, int]] = [(0.0, i, i) for i in range(agents)]
    heapq.heapify(events)
    ends: list[float] = []  # completion times of admitted requests (a heap)
    seq = agents
    while events:
        now, _, who = heapq.heappop(events)
        while ends and ends[0] <= now:
            heapq.heappop(ends)
        agent = state[who]
        result.limited += 1
        first = agent.phase == "verify" or (agent.phase == "config" and agent.step == 0)
        result.requests += 1 + first  # + its /cacerts
        if len(ends) >= policy.limit:
            result.refused += 1
            wait = _refused(agent, policy) + policy.overhead
        else:
            heapq.heappush(ends, now + policy.service)
            result.peak = max(result.peak, len(ends))
            result.busy += policy.service
            wait = policy.service + policy.overhead
            if _advance(agent, result, who, now + wait):
                continue
        seq += 1
        heapq.heappush(events, (now + wait, seq, who))
    result.end = max(result.joined)
    return result


def _refused(agent: _Agent, policy: Policy) -> float:
    """The wait after a 429, and the step the agent starts again from."""
    if agent.phase == "verify":
        return agent.backoff.delay(policy.retry_after)
    if agent.phase == "config":
        agent.step = 0
        return policy.period * (1 + (random.random() if policy.jitter else 0.5))
    agent.step = 0
    return policy.period * 0.4


def _advance(agent: _Agent, result: SimResult, who: int, done: float) -> bool:
    """Move on after an admitted request; True when the agent has joined."""
    if agent.phase == "verify":
        agent.phase, agent.step = "config", 0
        result.verified[who] = done
        return False
    agent.step += 1
    if agent.phase == "config" and agent.step == CONFIG_STEPS:
        agent.phase, agent.step = "node", 0
    elif agent.phase == "node" and agent.step == NODE_STEPS:
        result.joined[who] = done
        return True
    return False


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
