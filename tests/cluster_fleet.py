"""A fleet that creates its cluster: three servers and two agents, as `cluster init` and the
cluster image tests use it (the sections are fleet-file YAML, for conftest.fleet_yaml)."""

from __future__ import annotations

SERVERS = ("edge-srv-1", "edge-srv-2", "edge-srv-3")
AGENTS = ("edge-agent-1", "edge-agent-2")

CREATE = (
    "cluster:\n  create: true\n  server: https://edge-srv-1:6443\n"
    f"  servers: [{', '.join(SERVERS)}]\n  agent_token: true"
)
DEVICES = "devices:\n" + "".join(f"  - hostname: {h}\n" for h in SERVERS + AGENTS)
