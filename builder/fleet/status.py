"""`pifleet status fleet.yaml --kubeconfig FILE`: which of the fleet's devices joined.

The cluster's Nodes are read through the Kubernetes API with the official
`kubernetes` client and matched against the fleet's devices by name, and by the
labels every pifleet image gives its node (`builder.config.labels`):

- each device: Ready, NotReady (the failing condition and since when), or never seen;
- nodes that carry the fleet's label but are not in the inventory;
- nodes whose image id is not the current build's (an older image);
- the serial of the card each device was flashed on, from the flash ledger (`ledger`).

Exit 0 when every device is Ready, 1 otherwise. `--watch` redraws the table
as nodes join, with a progress bar toward the fleet's size; `--json` is for
scripts.

The kubeconfig is read as kubectl reads it, exec plugins included (they run, as with
kubectl: a kubeconfig is trusted like a script), after `kubeconfig.check` has refused a
broken one in one line. Each read of the cluster has an overall deadline (`--timeout`),
however slowly the server answers; an answer that is not a NodeList is refused in one
line; what the cluster says (names, reasons) is printed inert, never as terminal codes
or table markup.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from builder.config.fleet import load
from builder.config.labels import FLEET, IMAGE, SHORT
from builder.config.model import FleetConfig
from builder.fleet import kubeconfig as kubeconfigs
from builder.fleet import ledger
from builder.util.deadline import Deadline
from builder.util.errors import BuildError, UserError
from builder.util.terminal import inert

TIMEOUT = 30.0  # seconds for one read of the cluster, whole (--timeout)


@dataclass(frozen=True)
class DeviceState:
    name: str
    state: str  # "Ready", "NotReady", "never seen"
    reason: str = ""  # the failing Ready condition: reason and message
    since: str = ""  # lastTransitionTime of the Ready condition
    image: str = ""  # the node's pifleet/image label
    current: bool = True  # the node runs the current build's image (or shows no label)
    card: str = ""  # the serial of the card it was flashed on, from the flash ledger


@dataclass(frozen=True)
class FleetStatus:
    fleet: str
    image: str
    devices: list[DeviceState]
    unexpected: list[str]

    @property
    def ready(self) -> int:
        return sum(d.state == "Ready" for d in self.devices)

    @property
    def all_ready(self) -> bool:
        return self.ready == len(self.devices)


def _ready_condition(node: Any) -> Any:
    for condition in (node.status and node.status.conditions) or []:
        if condition.type == "Ready":
            return condition
    return None


def _device_state(name: str, node: Any, current: str) -> DeviceState:
    if node is None:
        return DeviceState(name, "never seen")
    labels = node.metadata.labels or {}
    image = labels.get(IMAGE, "")
    condition = _ready_condition(node)
    stamp = condition.last_transition_time if condition is not None else None
    since = stamp.isoformat() if stamp is not None else ""
    on_current = image in ("", current) or not current
    if condition is not None and condition.status == "True":
        return DeviceState(name, "Ready", since=since, image=image, current=on_current)
    reason = (
        f"{condition.reason}: {condition.message}"
        if condition is not None
        else "no Ready condition"
    )
    return DeviceState(name, "NotReady", reason, since, image, on_current)


def current_image(config: FleetConfig) -> str:
    """The short digest of the fleet's current golden image, from the build's SHA256SUMS."""
    with contextlib.suppress(OSError):
        for line in (config.output.dir / "SHA256SUMS").read_text().splitlines():
            digest, _, name = line.partition("  ")
            if name.lstrip("*") == f"{config.name}.img":
                return digest[:SHORT]
    return ""


def _card(cards: dict[str, ledger.Row], name: str) -> str:
    row = cards.get(name)
    if row is None:
        return ""
    return row.serial or row.card  # a file target has no serial: its path


def fleet_status(config: FleetConfig, nodes: list[Any]) -> FleetStatus:
    """Match the cluster's `nodes` (V1Node objects) against the fleet's devices."""
    nodes = [n for n in nodes if n.metadata is not None and n.metadata.name]
    by_name = {n.metadata.name: n for n in nodes}
    current = current_image(config)
    names = [d.hostname for d in config.devices]
    cards = ledger.cards_by_device(config.output.dir)
    devices = [
        dataclasses.replace(
            _device_state(name, by_name.get(name), current), card=_card(cards, name)
        )
        for name in names
    ]
    unexpected = sorted(
        n.metadata.name
        for n in nodes
        if (n.metadata.labels or {}).get(FLEET) == config.name and n.metadata.name not in names
    )
    return FleetStatus(config.name, current, devices, unexpected)


def read_nodes(kubeconfig: Path, timeout: float = TIMEOUT) -> list[Any]:
    """Every Node of the cluster `kubeconfig` points at, within `timeout` seconds in all;
    one-line errors: exit 2 for a kubeconfig or a server that is not what it should be."""
    from kubernetes import client
    from urllib3.exceptions import HTTPError

    api_client, host = kubeconfigs.api_client(kubeconfig)
    api = client.CoreV1Api(api_client)
    with Deadline(timeout, f"{kubeconfig}: the cluster at {host}", "--timeout") as deadline:
        try:
            answer = api.list_node(_request_timeout=(deadline.timeout(15), deadline.timeout(15)))
            items = answer.items
        except client.ApiException as exc:
            if exc.status == 0:  # the client could not read the answer (a bad timestamp)
                raise UserError(
                    f"{kubeconfig}: {host} sent no NodeList: {kubeconfigs.short(exc)}"
                ) from None
            reason = kubeconfigs.short(Exception(exc.reason))
            raise BuildError(f"{kubeconfig}: the cluster answered {exc.status} {reason}") from None
        except (HTTPError, OSError) as exc:
            raise BuildError(
                f"{kubeconfig}: cannot reach the cluster: {kubeconfigs.short(exc)}"
            ) from None
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise UserError(
                f"{kubeconfig}: {host} is not a Kubernetes API server: its answer to "
                f"/api/v1/nodes is not a NodeList ({kubeconfigs.short(exc, 80)})"
            ) from None
    if not isinstance(items, list):
        raise UserError(f"{kubeconfig}: {host} is not a Kubernetes API server (no NodeList)")
    return items


def check_seconds(option: str, value: float) -> float:
    """`--interval`, `--timeout`: a finite number of seconds above 0."""
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"status: {option} {value:g}: must be a number of seconds above 0")
    return value


def _shown(text: str) -> str:
    """A value from the cluster as table text: inert, and no rich markup."""
    from rich.markup import escape

    return escape(inert(text))


def _table(status: FleetStatus) -> Any:
    from rich.table import Table

    table = Table(title=f"fleet {status.fleet} (image {status.image or 'unknown: no SHA256SUMS'})")
    cards = any(d.card for d in status.devices)  # a column only once cards were flashed
    for column in ("device", "state", "since", "image", "card", "detail"):
        if column != "card" or cards:
            table.add_column(column)
    colors = {"Ready": "green", "NotReady": "red", "never seen": "yellow"}
    for d in status.devices:
        image = _shown(d.image) if d.current else f"[red]{_shown(d.image)} (older)[/red]"
        state = f"[{colors[d.state]}]{d.state}[/]"
        card = (_shown(d.card),) if cards else ()
        table.add_row(_shown(d.name), state, _shown(d.since), image, *card, _shown(d.reason))
    for name in status.unexpected:
        table.add_row(
            _shown(name),
            "[magenta]unexpected[/]",
            "",
            "",
            *(("",) if cards else ()),
            "fleet label, not in the inventory",
        )
    table.caption = f"{status.ready}/{len(status.devices)} Ready"
    return table


def _watch(config: FleetConfig, kubeconfig: Path, interval: float, timeout: float) -> FleetStatus:
    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, Progress, TextColumn

    progress = Progress(
        TextColumn("joined"), BarColumn(), TextColumn("{task.completed}/{task.total}")
    )
    task = progress.add_task("ready", total=len(config.devices))
    status = fleet_status(config, read_nodes(kubeconfig, timeout))
    with Live(Group(_table(status), progress), refresh_per_second=4) as live:
        while True:
            progress.update(task, completed=status.ready)
            live.update(Group(_table(status), progress))
            if status.all_ready:
                return status
            time.sleep(interval)
            status = fleet_status(config, read_nodes(kubeconfig, timeout))


def show(config: FleetConfig, kubeconfig: Path, timeout: float = TIMEOUT) -> FleetStatus:
    """Read the cluster once and print the table (what `pifleet status` prints)."""
    from rich.console import Console

    status = fleet_status(config, read_nodes(kubeconfig, timeout))
    Console().print(_table(status))
    return status


def command(args: argparse.Namespace) -> int:
    interval = check_seconds("--interval", args.interval)
    timeout = check_seconds("--timeout", getattr(args, "timeout", TIMEOUT))
    config = load(Path(args.config))
    kubeconfig = Path(args.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config")
    kubeconfig = kubeconfig.expanduser()
    if args.watch:
        status = _watch(config, kubeconfig, interval, timeout)
    elif args.json:
        status = fleet_status(config, read_nodes(kubeconfig, timeout))
        report = {**asdict(status), "ready": status.ready, "total": len(status.devices)}
        print(json.dumps(report, indent=2).replace("\x7f", "\\u007f"))  # ASCII, DEL escaped too
    else:
        status = show(config, kubeconfig, timeout)
    return 0 if status.all_ready else 1
