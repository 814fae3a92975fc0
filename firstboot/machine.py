"""The join state machine: load -> network -> clock -> verify -> configure -> start -> cleanup -> done.

Each state's work is idempotent and the next state is persisted atomically
before it runs, so a power cut anywhere resumes at the state that was running.
Waiting states retry with exponential backoff and full jitter. A terminal
failure (wrong token, CA mismatch, password conflict, failed pre-flight) is
recorded with a clear reason and stops the agent with exit status 2; the next
boot tries again from that state, deliberately, once.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from typing import Callable, Dict, Optional

from firstboot import card, collect, joinconfig, k3sfiles, naming, network, preflight
from firstboot.clock import Clock, clock_for, synchronized
from firstboot.paths import Root, remove, write_atomic
from firstboot.redact import Redactor
from firstboot.report import Reporter
from firstboot.server import (
    ServerError,
    check_pin,
    fetch_cacerts,
    pinned_context,
    prove_token,
    server_time,
)
from firstboot.service import ServiceError, ServiceManager
from firstboot.state import JoinState, StateError, StateStore
from firstboot.token import Token, TokenError, parse

PINNED_CA = "/var/lib/pifleet/server-ca.pem"
WANTS_LINK = "/etc/systemd/system/multi-user.target.wants/pifleet-firstboot.service"
TERMINAL_KINDS = ("ca_mismatch", "token_rejected", "not_k3s")
# Lines the K3s agent logs when it cannot join, and what they mean for the operator.
KNOWN_FAILURES = (
    (
        "Node password rejected",
        "Node password rejected: the server already knows node {node} with another password; "
        "delete it there (kubectl delete node {node}; kubectl -n kube-system delete secret "
        "{node}.node-password.k3s) or personalize this device with its stored node password",
    ),
    ("token CA hash does not match", "token CA hash does not match the cluster CA certificate"),
    ("401 Unauthorized", "the server rejected the token (401 Unauthorized)"),
)


class Terminal(Exception):
    """Stop here: retrying without a change would not help."""


class Backoff:
    """Exponential backoff with full jitter: a thousand devices do not retry in step."""

    def __init__(self, cap: float, sleep: Callable[[float], None], base: float = 1.0) -> None:
        self.cap = cap
        self.sleep = sleep
        self.base = base
        self.attempt = 0

    def wait(self) -> float:
        delay = random.uniform(0, min(self.cap, self.base * (2 ** min(self.attempt, 30))))
        self.attempt += 1
        self.sleep(delay)
        return delay


class Agent:
    def __init__(
        self, root: Root, config_path: str, reporter: Reporter, clock: Optional[Clock] = None
    ) -> None:
        self.root = root
        self.config_path = config_path
        self.report = reporter
        self.clock = clock or clock_for(root)
        self.services = ServiceManager(root)
        self.store = StateStore(root)
        self.sleep: Callable[[float], None] = time.sleep
        self.state = JoinState()
        self.join = joinconfig.JoinConfig(server="https://unset")
        self.device: Optional[joinconfig.DeviceConfig] = None
        self.handlers: Dict[str, Callable[[], str]] = {
            "load": self.do_load,
            "network": self.do_network,
            "clock": self.do_clock,
            "verify": self.do_verify,
            "configure": self.do_configure,
            "start": self.do_start,
            "cleanup": self.do_cleanup,
        }

    # -- driver ----------------------------------------------------------------

    def run(self) -> int:
        self.state = self.store.load()
        if self.state.state == "done" or self.store.marker.exists():
            self.report.state("done", "already joined as " + str(self.state.node_name))
            return 0
        current = self.state.state if self.state.state in self.handlers else "load"
        try:
            self.prepare()
            self.attach_card()
            self.report.ready()
            if self.state.failed_state:
                self.report.progress(current, "retrying after: " + str(self.state.failed_reason))
            self.state.failed_state = self.state.failed_reason = None
            self.state.boots += 1
            while current != "done":
                self.store.enter(self.state, current)
                _fault("after", current)
                self.report.state(current, _DESCRIPTIONS[current])
                current = self.handlers[current]()
                _fault("before", current)
            self.store.enter(self.state, "done")
            self.report.joined(str(self.state.node_name))
            return 0
        except (Terminal, StateError) as exc:
            return self.fail(current, str(exc))

    def fail(self, state: str, reason: str) -> int:
        self.state.failed_state, self.state.failed_reason = state, reason
        with contextlib.suppress(StateError):  # the reason still reaches console and journal
            self.store.save(self.state)
        self.report.failed(state, reason)
        return 2

    def prepare(self) -> None:
        """Read the join config and the device file (every boot; they hold no state)."""
        where = self.config_path
        try:
            self.join = joinconfig.load_join_config(self.root(where).read_bytes(), where)
        except FileNotFoundError:
            raise Terminal(
                "no join config at " + where + ": the image was not built by pifleet"
            ) from None
        except (OSError, joinconfig.JoinConfigError) as exc:
            raise Terminal(str(exc)) from None
        device_path = self.boot_file(joinconfig.DEVICE_FILE)
        try:
            raw = self.root(device_path).read_bytes()
        except FileNotFoundError:
            self.device = None
            return
        except OSError as exc:
            raise Terminal("cannot read " + device_path + ": " + str(exc.strerror)) from None
        try:
            self.device = joinconfig.load_device_config(raw, device_path)
        except joinconfig.JoinConfigError as exc:
            raise Terminal(str(exc)) from None

    def attach_card(self) -> None:
        """Keep the story on the boot partition (`pifleet/report.json`), secrets redacted."""
        known = []
        for path in (self.join.token_file, k3sfiles.NODE_PASSWORD_PATH,
                     self.boot_file(joinconfig.BOOT_TOKEN_FILE),
                     self.boot_file(joinconfig.BOOT_NODE_PASSWORD_FILE)):  # fmt: skip
            with contextlib.suppress(OSError, UnicodeDecodeError):
                known.append(self.root(path).read_text().strip())
        known += collect.network_secrets(self.root, self.join.boot_dir.rstrip("/"))
        directory = self.root(self.boot_file(card.REPORT_NAME)).parent
        name = self.state.node_name or (self.device.hostname if self.device else "") or "?"
        report = card.CardReport(directory, name, self.server, Redactor(known))
        self.report.listeners.append(report)

    def boot_file(self, name: str) -> str:
        return self.join.boot_dir.rstrip("/") + "/" + joinconfig.BOOT_SUBDIR + "/" + name

    @property
    def server(self) -> str:
        return (
            self.device.server if self.device and self.device.server else self.join.server
        ).rstrip("/")

    def backoff(self, cap: Optional[float] = None) -> Backoff:
        return Backoff(min(cap or self.join.backoff_cap, self.join.backoff_cap), self.sleep)

    # -- states ----------------------------------------------------------------

    def do_load(self) -> str:
        configured = self.device.hostname if self.device else None
        try:
            name = naming.node_name(self.root, configured, self.join.hostname_pattern)
        except naming.NamingError as exc:
            raise Terminal(str(exc)) from None
        problems = preflight.problems(self.root, self.join.k3s_binary)
        if problems:
            raise Terminal("; ".join(problems))
        if configured is None:
            naming.set_hostname(self.root, name)
        self.state.node_name = name
        self.report.progress("load", "node name " + name)
        return "network"

    def do_network(self) -> str:
        backoff = self.backoff()
        last = ""
        while True:
            problem = None
            if not network.has_default_route(self.root):
                problem = "waiting for a default route"
            else:
                problem = network.resolve_problem(self.server)
            if problem is None:
                return "clock"
            if problem != last:
                self.report.progress("network", problem)
                last = problem
            backoff.wait()

    def do_clock(self) -> str:
        build_time = self.join.build_time
        if self.clock.now() >= build_time:
            return "verify"
        self.report.progress(
            "clock", "the clock is before the image's build time; waiting for time sync"
        )
        deadline = time.monotonic() + self.join.clock_sync_timeout
        backoff = self.backoff(cap=5.0)
        while time.monotonic() < deadline:
            if synchronized(self.root) and self.clock.now() >= build_time:
                return "verify"
            backoff.wait()
        self.report.progress("clock", "no time sync; taking the time from the pinned server")
        backoff = self.backoff()
        while True:
            try:
                body = fetch_cacerts(self.server)
                check_pin(body, self.token())
                now = server_time(self.server, pinned_context(body, check_time=False))
            except ServerError as exc:
                self.server_problem("clock", exc, backoff)
                continue
            self.clock.set(now)
            self.report.progress("clock", "clock set from the server's Date header")
            return "verify"

    def do_verify(self) -> str:
        token = self.token()
        if token.ca_hash is None:
            self.report.warning(
                "the token carries no CA hash: the server's CA is not pinned (use a K10 token)"
            )
        backoff = self.backoff()
        while True:
            try:
                body = fetch_cacerts(self.server)
                digest = check_pin(body, token)
                prove_token(self.server, token, pinned_context(body))
            except ServerError as exc:
                self.server_problem("verify", exc, backoff)
                continue
            write_atomic(self.root(PINNED_CA), body, 0o644)
            self.state.ca_hash = digest
            self.report.progress(
                "verify", "server CA pinned (sha256 " + digest[:16] + "...), token accepted"
            )
            return "configure"

    def server_problem(self, state: str, exc: ServerError, backoff: Backoff) -> None:
        if exc.kind in TERMINAL_KINDS:
            raise Terminal(str(exc))
        self.report.progress(state, "waiting for the server: " + str(exc))
        backoff.wait()

    def do_configure(self) -> str:
        role, node = self.join.role, str(self.state.node_name)
        device_labels = self.device.node_labels if self.device else []
        device_taints = self.device.node_taints if self.device else []
        files = [
            (k3sfiles.TOKEN_PATH, (self.token().text() + "\n").encode(), 0o600),
            (
                k3sfiles.CONFIG_PATH,
                k3sfiles.config_yaml(
                    self.server,
                    node,
                    k3sfiles.merge_labels(self.join.node_labels, device_labels),
                    list(self.join.node_taints) + list(device_taints),
                    list(self.join.kubelet_args),
                ),
                0o600,
            ),
            (k3sfiles.env_path(role), k3sfiles.env_file(), 0o600),
            (k3sfiles.unit_path(role), k3sfiles.unit_file(role, self.join.k3s_binary), 0o644),
        ]
        preseeded = self.read_optional(self.boot_file(joinconfig.BOOT_NODE_PASSWORD_FILE))
        if preseeded:
            files.append((k3sfiles.NODE_PASSWORD_PATH, preseeded.strip() + b"\n", 0o600))
        for path, data, mode in files:
            target = self.root(path)
            if self.read_optional(path) != data or (target.stat().st_mode & 0o777) != mode:
                write_atomic(target, data, mode)
        return "start"

    def do_start(self) -> str:
        unit = k3sfiles.unit_name(self.join.role)
        since = time.time() - 5
        try:
            self.services.daemon_reload()
            self.services.enable_and_start(unit)
        except ServiceError as exc:
            raise Terminal(str(exc)) from None
        backoff = self.backoff(cap=10.0)
        last = ""
        while True:
            status = self.services.state(unit)
            if status == "active":
                return "cleanup"
            for needle, message in KNOWN_FAILURES:
                if any(needle in line for line in self.services.journal(unit, since)):
                    raise Terminal(message.format(node=self.state.node_name))
            if status != last:
                self.report.progress(
                    "start", "waiting for K3s to register the node (" + unit + " is " + status + ")"
                )
                last = status
            backoff.wait()

    def do_cleanup(self) -> str:
        for path in (
            self.boot_file(joinconfig.BOOT_TOKEN_FILE),
            self.boot_file(joinconfig.BOOT_NODE_PASSWORD_FILE),
            self.join.token_file,
            WANTS_LINK,
        ):
            remove(self.root(path))
        self.store.mark_joined()
        return "done"

    # -- helpers -----------------------------------------------------------------

    def read_optional(self, path: str) -> Optional[bytes]:
        try:
            return self.root(path).read_bytes()
        except FileNotFoundError:
            return None

    def token(self) -> Token:
        for path in (self.boot_file(joinconfig.BOOT_TOKEN_FILE), self.join.token_file):
            raw = self.read_optional(path)
            if raw is not None:
                try:
                    return parse(raw.decode("utf-8", "replace"))
                except TokenError as exc:
                    raise Terminal(path + ": " + str(exc)) from None
        raise Terminal(
            "no join token at "
            + self.boot_file(joinconfig.BOOT_TOKEN_FILE)
            + " or "
            + self.join.token_file
        )


_DESCRIPTIONS = {
    "load": "reading the join config and checking the device",
    "network": "waiting for the network",
    "clock": "checking the clock",
    "verify": "pinning the server's CA and proving the token",
    "configure": "writing the K3s configuration",
    "start": "starting K3s",
    "cleanup": "removing join secrets",
}


def _fault(point: str, state: str) -> None:
    """Fault injection for the power-cut tests: PIFLEET_FAULT=kill-<after|before>:<state>."""
    if os.environ.get("PIFLEET_FAULT") == "kill-" + point + ":" + state:
        os.kill(os.getpid(), signal.SIGKILL)
