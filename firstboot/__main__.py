"""python3 -m firstboot {run,custody,check-server,status,collect}: the agent's command line (a contract)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from firstboot import joinconfig
from firstboot.paths import Root


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m firstboot", description="pifleet first-boot agent"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="join this device to the fleet (the systemd service runs this)"
    )
    run.add_argument(
        "--root", default="/", help="resolve every absolute path under this directory (tests)"
    )
    run.add_argument(
        "--config", default=joinconfig.JOIN_CONFIG_PATH, help="join config (device path)"
    )
    custody = sub.add_parser(
        "custody", help="move the secrets off the boot partition (pifleet-custody.service)"
    )
    custody.add_argument("--root", default="/")
    custody.add_argument("--config", default=joinconfig.JOIN_CONFIG_PATH)
    check = sub.add_parser("check-server", help="check a K3s server and a token, print one line")
    check.add_argument("--server", required=True, help="https://host:6443")
    check.add_argument("--token-file", required=True, help="file holding the token")
    check.add_argument("--timeout", type=float, default=10.0)
    status = sub.add_parser("status", help="show the persisted join state (no secrets)")
    status.add_argument("--root", default="/")
    status.add_argument("--json", action="store_true")
    collect = sub.add_parser("collect", help="write a support bundle (tar.gz, secrets removed)")
    collect.add_argument("--root", default="/")
    collect.add_argument("-o", "--output", help="default: ./pifleet-collect-<time>.tar.gz")
    args = parser.parse_args(argv)
    if args.command == "collect":
        return _collect(args)
    if args.command == "run":
        return _run(args)
    if args.command == "custody":
        return _custody(args)
    if args.command == "check-server":
        return _check(args)
    return _status(args)


def _run(args: argparse.Namespace) -> int:
    from firstboot.machine import Agent
    from firstboot.report import Reporter

    try:
        return Agent(Root(args.root), args.config, Reporter()).run()
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line, exit 1 so systemd restarts and the state resumes
        sys.stderr.write(
            "pifleet-firstboot: failed state=internal reason="
            + type(exc).__name__
            + ": "
            + str(exc)
            + "\n"
        )
        return 1


def _custody(args: argparse.Namespace) -> int:
    """Exit 0 also when nothing was there; 1 (one line) when a file could not be moved."""
    from firstboot.bootpart import make_writable
    from firstboot.custody import boot_dir_of, secure
    from firstboot.retry import Terminal

    root = Root(args.root)

    def say(line: str) -> None:
        print("pifleet-custody: " + line, flush=True)

    if root.is_real:
        # cloud-init's local stage, just before this, rendered the network without fsync: a
        # power cut in the next seconds left it empty (the agent syncs too, but later).
        os.sync()
    boot_dir = boot_dir_of(root, args.config)
    make_writable(root(boot_dir), say)
    try:
        moved = secure(root, boot_dir, say)
    except Terminal as exc:
        say("failed: " + str(exc))
        return 1
    say("the boot partition holds no secrets" + (" (" + str(moved) + " moved)" if moved else ""))
    return 0


def _collect(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from firstboot.collect import write_bundle

    name = "pifleet-collect-" + time.strftime("%Y%m%d-%H%M%S") + ".tar.gz"
    try:
        path = write_bundle(Root(args.root), Path(args.output or name))
    except OSError as exc:
        print("error: cannot write " + str(args.output or name) + ": " + str(exc.strerror))
        return 1
    print("wrote " + str(path) + " (secrets removed; check it before you send it)")
    return 0


def _check(args: argparse.Namespace) -> int:
    from firstboot.checkserver import check
    from firstboot.token import TokenError, parse

    try:
        with open(args.token_file, encoding="utf-8") as f:
            token = parse(f.read())
    except OSError as exc:
        print("error: cannot read " + args.token_file + ": " + str(exc.strerror))
        return 1
    except TokenError as exc:
        print("error: " + args.token_file + ": " + str(exc))
        return 1
    ok, line = check(args.server, token, args.timeout)
    print(line if ok else "error: " + line)
    return 0 if ok else 1


def _status(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from firstboot.state import StateStore

    state = StateStore(Root(args.root)).load()
    if args.json:
        print(json.dumps(asdict(state), indent=2, sort_keys=True))
        return 0
    print("state:     " + state.state)
    print("node name: " + str(state.node_name or "(not named yet)"))
    if state.ca_hash:
        print("server CA: sha256 " + state.ca_hash)
    if state.failed_state:
        print("failed in: " + state.failed_state + ": " + str(state.failed_reason))
    print("boots:     " + str(state.boots))
    for entry in state.history[-8:]:
        print("  " + str(entry.get("at")) + "  " + str(entry.get("state")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
