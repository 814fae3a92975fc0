"""A kubeadm worker's own states (join.json `kind: kubeadm`): the agent (firstboot/machine.py)
runs them in place of its K3s verify, configure and start; load, network, clock and cleanup
are shared.

| state | what it does | source |
|---|---|---|
| clock | as the agent's own, but a clock still wrong after `clock_sync_timeout` is set from the Date header of the API server the pin authenticates (cluster-info's JWS and pin need no time) | firstboot/machine.py do_clock |
| verify | kubeadm's token discovery before anything else (firstboot/kubeadm_discovery.py): cluster-info read anonymously, its JWS checked with the token, the CA pinned by its SPKI hash, cluster-info read again over TLS to that CA. A wrong token or pin sends nothing more: one line, a verdict. An unreachable or late API server is waited for | cmd/kubeadm/app/discovery/token/token.go |
| configure | the JoinConfiguration (firstboot/kubeadm_join.py), 0600 from its first byte: it holds the token | kubeadm v1beta4 types.go |
| start | `kubeadm join --config`, then the Node Ready through the kubelet's kubelet.conf, within `start_timeout` (firstboot/kubeadm_node.py) | cmd/kubeadm/app/cmd/join.go |

The token is kubeadm's bootstrap token `<id>.<secret>`, read from where a K3s token would be
(the boot partition's, else the image's); it never appears in a message.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Dict, List, TypeVar

import firstboot.secrets as secrets
from firstboot import kubeadm_discovery, kubeadm_join, kubeadm_node
from firstboot.clock import synchronized
from firstboot.paths import write_atomic
from firstboot.retry import Terminal
from firstboot.state import ORDER

PINNED_CA = "/var/lib/pifleet/server-ca.pem"  # the same place as a K3s server's
CONFIG_PATH = secrets.KUBEADM_CONFIG.path
T = TypeVar("T")


TEXTS = {  # what the console says in these states, in place of the K3s words
    "configure": "writing kubeadm's JoinConfiguration",
    "start": "running kubeadm join and waiting for the Node to be Ready",
}


def install(agent: Any) -> None:
    """`agent` runs a kubeadm worker's states and says so."""
    agent.handlers.update(handlers(agent))
    agent.texts.update(TEXTS)


def handlers(agent: Any) -> Dict[str, Callable[[], str]]:
    """The states that differ for a kubeadm worker (this module's `do_<state>`), bound to
    `agent`, as the agent binds its own."""
    own = {name: globals().get("do_" + name) for name in ORDER}
    return {name: functools.partial(f, agent) for name, f in own.items() if f is not None}


def endpoint(agent: Any) -> str:
    """`host:port` of the API server: the device's server, else the fleet's."""
    return str(agent.server).split("://", 1)[-1].rstrip("/")


def pins(agent: Any) -> List[str]:
    """The CA pins: the device's (boot-test's test server, a re-pinned card), else the fleet's."""
    device = agent.device
    return list(
        device.ca_cert_hashes if device and device.ca_cert_hashes else agent.join.ca_cert_hashes
    )


def bootstrap_token(agent: Any) -> kubeadm_discovery.BootstrapToken:
    """The bootstrap token in the first place that holds one; Terminal naming the file."""
    paths: List[str] = agent.where(*secrets.JOIN_TOKEN)
    for path in paths:
        try:
            raw = agent.root(path).read_bytes()
        except FileNotFoundError:
            continue
        try:
            return kubeadm_discovery.parse_token(raw.decode("utf-8", "replace").strip())
        except kubeadm_discovery.DiscoveryError as exc:
            raise Terminal(path + ": " + str(exc)) from None
    raise Terminal("no join token at " + " or ".join(paths))


def do_clock(agent: Any) -> str:
    """The agent's clock state, but the time comes from the API server the pin authenticates
    (kubeadm_discovery.server_time), as a K3s agent's comes from its pinned server."""
    if agent.clock.now() >= agent.join.build_time:
        return "verify"
    agent.report.progress(
        "clock", "the clock is before the image's build time; waiting for time sync"
    )
    deadline, backoff = time.monotonic() + agent.join.clock_sync_timeout, agent.backoff(5.0)
    while time.monotonic() < deadline:
        if synchronized(agent.root) and agent.clock.now() >= agent.join.build_time:
            return "verify"
        backoff.wait()
    agent.report.progress("clock", "no time sync; taking the time from the pinned API server")
    when = until_answered(agent, "clock", kubeadm_discovery.server_time)
    agent.clock.set(when)
    agent.report.progress("clock", "clock set from the API server's Date header")
    return "verify"


def until_answered(agent: Any, state: str, ask: Callable[..., T]) -> T:
    """`ask(endpoint, token, pins, allow_unpinned)` until the API server answers: a terminal
    kind is the verdict, anything else is waited out with backoff."""
    backoff = agent.backoff()
    while True:
        token = bootstrap_token(agent)
        try:
            return ask(endpoint(agent), token, pins(agent), agent.join.allow_unpinned)
        except kubeadm_discovery.DiscoveryError as exc:
            if exc.kind in kubeadm_discovery.TERMINAL_KINDS:
                raise Terminal(str(exc)) from None
            agent.report.progress(state, "waiting for the API server: " + str(exc))
            backoff.wait(exc.retry_after)


def do_verify(agent: Any) -> str:
    found = until_answered(agent, "verify", kubeadm_discovery.discover)
    write_atomic(agent.root(PINNED_CA), found.ca_pem, 0o644)
    agent.state.ca_hash = found.ca_hashes[0].removeprefix("sha256:")
    if found.pinned:
        text = "cluster CA pinned (" + found.ca_hashes[0][:23] + "...), token accepted"
    else:
        agent.report.warning(
            "no CA pin (allow_unpinned): nothing proved this cluster's CA before the "
            "token was used (pin it: `pifleet token pin --kind kubeadm`)"
        )
        text = "token accepted; no CA pin, so the CA this server sent is trusted ("
        text += found.ca_hashes[0][:23] + "...)"
    agent.report.progress("verify", text)
    return "configure"


def do_configure(agent: Any) -> str:
    join, device = agent.join, agent.device
    labels = list(join.node_labels) + list(device.node_labels if device else [])
    taints = list(join.node_taints) + list(device.node_taints if device else [])
    try:
        config = kubeadm_join.join_configuration(
            str(agent.state.node_name), endpoint(agent), bootstrap_token(agent).text(),
            pins(agent), labels, taints, list(join.kubelet_args),
        )  # fmt: skip
    except kubeadm_join.JoinConfigurationError as exc:
        raise Terminal(str(exc)) from None
    write_atomic(agent.root(CONFIG_PATH), config, 0o600)
    agent.report.progress("configure", "JoinConfiguration written (" + CONFIG_PATH + ")")
    return "start"


def do_start(agent: Any) -> str:
    """`kubeadm join --config` (after `kubeadm reset --force` when a power cut broke a join
    off; not again once it wrote kubelet.conf), then the Node Ready (kubeadm_node.py)."""
    root, node = agent.root, str(agent.state.node_name)
    timeout = agent.join.start_timeout
    kubeadm = str(root(agent.join.kubeadm_binary))
    secret = bootstrap_token(agent).secret()

    def progress(text: str) -> None:
        agent.report.progress("start", text)

    try:
        if kubeadm_node.broken_off(root):
            progress("a join was broken off (power cut?): kubeadm reset --force first")
            kubeadm_node.run_kubeadm([kubeadm, "reset", "--force"], timeout, progress, secret)
        if not kubeadm_node.joined_before(root):
            argv = [kubeadm, "join", "--config", str(root(CONFIG_PATH))]
            kubeadm_node.run_kubeadm(argv, timeout, progress, secret)
    except kubeadm_node.NodeError as exc:
        raise Terminal(str(exc)) from None
    deadline, backoff, said = time.monotonic() + timeout, agent.backoff(10.0), ""
    while time.monotonic() < deadline:
        try:
            is_ready, said = kubeadm_node.ready(root, node)
        except kubeadm_node.NodeError as exc:
            raise Terminal(str(exc)) from None
        if is_ready:
            progress("Node " + node + " is Ready")
            return "cleanup"
        progress("waiting for Node " + node + " to be Ready: " + said)
        backoff.wait()
    raise Terminal("Node " + node + " not Ready within " + str(int(timeout)) + " s: " + said)
