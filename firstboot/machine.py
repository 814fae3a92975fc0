"""The join state machine: load -> network -> clock -> verify -> configure -> start -> cleanup -> done.

Each state's work is idempotent and the next state is persisted atomically
before it runs, so a power cut anywhere resumes at the state that was running.
Waiting states (no network, /cacerts 5xx, readyz 404/429/503, a bootstrap token
before the API server is up, timeouts, TLS resets) retry with exponential
backoff and full jitter. A final verdict (wrong token answered 401 several times,
CA mismatch, password conflict, failed pre-flight, K3s not joining within
start_timeout) is shown on console, journal and `status`, and then re-checked
every recheck_interval (jittered) from the same state, so a fix made on the
server later still joins without a reboot. recheck_interval 0 exits with 2
after the verdict instead (tests, manual runs).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Callable, Dict, List, Optional

import firstboot.airgap as airgap
import firstboot.bootpart as bootpart
import firstboot.caclock as caclock
import firstboot.fsyncprobe as fsyncprobe
import firstboot.kubeadm_states as kubeadm_states
import firstboot.nodepassword as nodepassword
import firstboot.reinit as reinit
import firstboot.roles as roles
import firstboot.secrets as secrets
import firstboot.servernode as servernode
import firstboot.starting as starting
from firstboot import card, collect, custody, joinconfig, k3sfiles, naming, network, preflight
from firstboot.clock import Clock, clock_for, synchronized
from firstboot.paths import Root, write_atomic
from firstboot.redact import Redactor
from firstboot.report import Reporter
from firstboot.retry import AgentLock, Backoff, Terminal, recheck_delay
from firstboot.server import (
    Pin,
    ServerError,
    check_pin,
    fetch_cacerts,
    prove_token,
    server_time,
)
from firstboot.service import ServiceManager
from firstboot.state import ORDER, JoinState, StateError, StateStore
from firstboot.state import fault as _fault
from firstboot.texts import DESCRIPTIONS
from firstboot.token import Token, TokenError, read_first

PINNED_CA = "/var/lib/pifleet/server-ca.pem"
WANTS_LINK = "/etc/systemd/system/multi-user.target.wants/pifleet-firstboot.service"
TERMINAL_KINDS = ("ca_mismatch", "token_rejected", "forbidden", "not_k3s")
REJECTIONS = 3  # 401s in a row before a wrong token is a verdict


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
        self.state, self.join = JoinState(), joinconfig.JoinConfig(server="https://unset")
        self.device: Optional[joinconfig.DeviceConfig] = None
        self.handlers: Dict[str, Callable[[], str]] = {s: getattr(self, "do_" + s) for s in ORDER}
        self.probed = False  # the server's disk measured in this run (fsyncprobe.py)
        self.texts = dict(DESCRIPTIONS)  # what the console says in each state

    # -- driver ----------------------------------------------------------------

    def run(self) -> int:
        lock = AgentLock(self.root)
        if not lock.acquire():
            self.report.warning("another agent (pid " + lock.holder() + ") holds " + str(lock.path))
            return 1
        if self.root.is_real:
            # What the first boot wrote before the agent, cloud-init's rendered network above
            # all, it wrote without fsync: a power cut in the next seconds left
            # 10-cloud-init-eth0.network empty (ext4's delayed allocation), and the device
            # came back with no network, for good (the QEMU power cut in verify showed it).
            os.sync()
        try:
            while True:
                code = self.run_once()
                if code is not None:
                    return code
                if self.join.recheck_interval <= 0:
                    return 2
                self.sleep(recheck_delay(self.join.recheck_interval))
        finally:
            lock.release()

    def run_once(self) -> Optional[int]:
        """0 when joined, None after a verdict (reported)."""
        self.state = self.store.load()
        if self.state.state == "done" or self.store.marker.exists():
            self.report.state("done", "already joined as " + str(self.state.node_name))
            return 0
        current = self.state.state if self.state.state in self.handlers else "load"
        try:
            self.prepare()
            bootpart.make_writable(self.root(self.join.boot_dir), self.report.warning)
            custody.secure(self.root, self.join.boot_dir, lambda t: self.report.progress("load", t))
            self.attach_card()
            self.report.ready()
            if self.state.failed_state:
                self.report.progress(current, "retrying after: " + str(self.state.failed_reason))
            self.state.failed_state = self.state.failed_reason = None
            self.state.boots += 1
            while current != "done":
                self.store.enter(self.state, current)
                _fault("after", current)
                self.report.state(current, self.texts[current])
                current = self.handlers[current]()
                _fault("before", current)
            self.store.enter(self.state, "done")
            self.report.joined(str(self.state.node_name))
            return 0
        except (Terminal, StateError) as exc:
            self.fail(current, str(exc))
            return None

    def fail(self, state: str, reason: str) -> None:
        self.state.failed_state, self.state.failed_reason = state, reason
        with contextlib.suppress(StateError):  # the reason still reaches console and journal
            self.store.save(self.state)
        self.report.failed(state, reason)
        if self.join.recheck_interval > 0:
            again = "checking again in about " + str(int(self.join.recheck_interval))
            self.report.progress(state, again + " s (no reboot needed)")

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
        if self.join.kind == "kubeadm":  # its own states and words: kubeadm_states.py
            kubeadm_states.install(self)
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
        for path in self.where(*secrets.VALUES):
            with contextlib.suppress(OSError, UnicodeDecodeError):
                known.append(self.root(path).read_text().strip())
        known += collect.network_secrets(self.root, self.join.boot_dir.rstrip("/"))
        directory = self.root(self.boot_file(card.REPORT_NAME)).parent
        name = self.state.node_name or (self.device.hostname if self.device else "") or "?"
        report = card.CardReport(directory, name, self.server, Redactor(known))
        self.report.listeners.append(report)

    def boot_file(self, name: str) -> str:
        return self.join.boot_dir.rstrip("/") + "/" + joinconfig.BOOT_SUBDIR + "/" + name

    def where(self, *items: secrets.Secret) -> List[str]:
        """Where these secrets are on this device (firstboot/secrets.py's table)."""
        return secrets.paths(items, self.join.boot_dir, self.join.token_file)

    @property
    def server(self) -> str:
        return (
            self.device.server if self.device and self.device.server else self.join.server
        ).rstrip("/")

    @property
    def role(self) -> str:
        return roles.role_of(self.join, self.device)

    @property
    def initialises(self) -> bool:
        return roles.initialises(self.device)

    def backoff(self, cap: Optional[float] = None) -> Backoff:
        return Backoff(min(cap or self.join.backoff_cap, self.join.backoff_cap), self.sleep)

    # -- states ----------------------------------------------------------------

    def do_load(self) -> str:
        configured = self.device.hostname if self.device else None
        try:
            name = naming.node_name(self.root, configured, self.join.hostname_pattern)
        except naming.NamingError as exc:
            raise Terminal(str(exc)) from None
        kubeadm = self.join.kind == "kubeadm"
        binary = self.join.kubeadm_binary if kubeadm else self.join.k3s_binary
        if problems := preflight.problems(self.root, binary, "kubeadm" if kubeadm else "K3s"):
            raise Terminal("; ".join(problems))
        self.report.progress("load", preflight.page_size_note())
        dns = [] if kubeadm else [preflight.pod_dns_warning(self.root, self.join.kubelet_args)]
        for warning in filter(None, dns):  # K3s's own fallback; kubeadm's kubelet has none
            self.report.warning(warning)
        if configured is None:
            naming.set_hostname(self.root, name)
        self.state.node_name = name
        self.report.progress("load", "node name " + name)
        return "network"

    def do_network(self) -> str:
        backoff = self.backoff()
        last, nss = "", 0
        while True:
            problem = None
            if not network.has_default_route(self.root):
                problem = "waiting for a default route"
            elif self.initialises:  # this server is the cluster: nothing to reach yet
                return "clock"
            else:
                final, problem = network.resolve_problem(self.root, self.server)
                nss = nss + 1 if final else 0
                if nss >= REJECTIONS:  # only NSS (mDNS) knows the name, several times over
                    raise Terminal(str(problem))
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
        if self.initialises:
            self.report.progress("clock", "no time sync and no server to ask; going on")
            return "verify"
        self.report.progress("clock", "no time sync; taking the time from the pinned server")
        backoff = self.backoff()
        while True:
            try:
                self.clock_from(check_pin(fetch_cacerts(self.server), self.token()), "clock")
                return "verify"
            except ServerError as exc:
                self.server_problem("clock", exc, backoff)

    def clock_from(self, pin: Pin, state: str) -> None:
        """Set the clock from the Date header of the server the pin authenticates (TLS to the
        pinned CA with certificate times unchecked: the clock is what is in doubt)."""
        self.clock.set(server_time(self.server, pin.context(check_time=False)))
        self.report.progress(state, "clock set from the pinned server's Date header")

    def do_verify(self) -> str:
        backoff, rejected = self.backoff(), 0
        while True:
            token = self.token()
            try:
                if self.initialises:  # the CA in the image is the cluster's: pin it locally
                    pin, node = roles.local_pin(self.root, token), str(self.state.node_name)
                    reinit.refuse_second_cluster(
                        self.root, self.join, self.device, node, pin.ca_hash
                    )
                    self.pinned(token, pin)
                    return "configure"
                pin = check_pin(fetch_cacerts(self.server), token)
                prove_token(self.server, token, pin.context(), role=self.role)
            except ServerError as exc:
                if exc.kind == "clock":  # the clock passed the build-time check, yet is wrong
                    self.report.progress("verify", str(exc))
                    with contextlib.suppress(ServerError):
                        self.clock_from(pin, "verify")
                        continue
                rejected = rejected + 1 if exc.kind == "token_rejected" else 0
                if 0 < rejected < REJECTIONS:
                    exc.kind = "waiting"
                self.server_problem("verify", exc, backoff)
                continue
            self.pinned(token, pin)
            return "configure"

    def pinned(self, token: Token, pin: Pin) -> None:
        write_atomic(self.root(PINNED_CA), pin.trust, 0o644)
        self.state.ca_hash = pin.ca_hash
        if token.pinned:
            text = "server CA pinned (sha256 " + pin.ca_hash[:16] + "...), token accepted"
        else:
            self.report.warning(
                "the token carries no CA hash: nothing proved this server's CA before the "
                "password was sent (use a K10<hash>:: token, `pifleet token pin`)"
            )
            text = "token accepted; the token had no CA hash, so K3s now trusts the CA this "
            text += "server sent (sha256 " + pin.ca_hash[:16] + "...)"
        self.report.progress("verify", text)

    def server_problem(self, state: str, exc: ServerError, backoff: Backoff) -> None:
        if exc.kind in TERMINAL_KINDS:
            raise Terminal(str(exc))
        self.report.progress(state, "waiting for the server: " + str(exc))
        backoff.wait(exc.retry_after)

    def do_configure(self) -> str:
        role, node = self.role, str(self.state.node_name)
        config = roles.k3s_config(self.root, self.join, self.device, self.server, node)
        files = [
            (secrets.K3S_TOKEN.path, self.k3s_token(), 0o600),
            (k3sfiles.CONFIG_PATH, config, 0o600),
            (k3sfiles.env_path(role), k3sfiles.env_file(self.join.proxy), 0o600),
            (k3sfiles.unit_path(role), k3sfiles.unit_file(role, self.join.k3s_binary), 0o644),
        ]
        for found in map(self.read_optional, self.where(*secrets.PRESEEDED_NODE_PASSWORD)):
            if found:  # the boot partition's, else custody's copy
                files.append((secrets.K3S_NODE_PASSWORD.path, found.strip() + b"\n", 0o600))
                break
        seed = roles.seed_id(self.root, [self.config_path, self.boot_file(joinconfig.DEVICE_FILE)])
        kept = roles.config_kept(self.root, role, self.state.config_seed, seed)
        if kept:
            self.report.progress("configure", kept)
        for path, data, mode in files:
            target = self.root(path)
            if kept and path == k3sfiles.CONFIG_PATH:
                continue
            if self.read_optional(path) != data or (target.stat().st_mode & 0o777) != mode:
                write_atomic(target, data, mode)
        self.state.config_seed = seed  # saved on entering `start`
        return "start"

    def do_start(self) -> str:
        made = nodepassword.ensure(self.root)  # K3s's own is not fsynced (nodepassword.py)
        if made:
            self.report.progress("start", made)

        def progress(text: str) -> None:
            self.report.progress("start", text)

        if self.role == "server":
            if not self.probed:  # etcd's disk, before K3s loads it: a warning at most
                fsyncprobe.tell(self.root, progress, self.report.warning)
                self.probed = True
            timeout = self.join.clock_sync_timeout
            caclock.wait_for_ca(
                self.root, PINNED_CA, self.clock, timeout, self.backoff(5.0), progress
            )
        unit, node = k3sfiles.unit_name(self.role), str(self.state.node_name)
        timeout = self.join.start_timeout + airgap.allowance(self.root)  # slow cards import long
        own_node = functools.partial(servernode.not_joined, self.root, node)
        joined = own_node if self.role == "server" else None  # an agent's READY is its Node
        backoff = self.backoff(10.0)
        starting.start(self.services, unit, node, timeout, backoff, progress, joined, self.root)
        return "cleanup"

    def do_cleanup(self) -> str:
        boot = self.root(self.join.boot_dir)
        for path in (*self.where(*secrets.CLEANUP), WANTS_LINK):
            bootpart.remove(self.root(path), path, boot, self.report.warning)
        self.store.mark_joined()
        return "done"

    # -- helpers -----------------------------------------------------------------

    def read_optional(self, path: str) -> Optional[bytes]:
        try:
            return self.root(path).read_bytes()
        except FileNotFoundError:
            return None

    def k3s_token(self) -> bytes:
        """The token for K3s in the verified K10<hash>:: form, so K3s keeps the pin."""
        if not self.state.ca_hash:
            raise Terminal("no verified server CA recorded; verify again")
        user = "node" if self.role == "agent" else "server"
        return (self.token().pinned_text(self.state.ca_hash, user) + "\n").encode()

    def token(self) -> Token:
        try:
            return read_first(self.root, self.where(*secrets.JOIN_TOKEN), self.role)
        except TokenError as exc:
            raise Terminal(str(exc)) from None
