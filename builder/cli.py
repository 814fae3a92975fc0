"""argparse front of `pifleet`: parse, dispatch, turn expected failures into one line.

Subcommands: build, inspect, lint, personalize, flash, boot-test, base, fetch, images,
test-server, token, demo, cluster, status, diagnose, node. Each handler lives in the module that owns the work;
this file only parses arguments and maps errors to exit codes
(0 ok, 1 runtime failure, 2 bad input, 130 interrupted).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from builder import version
from builder.qemu.helptext import MODES
from builder.util.console import (
    exit_if_stdout_failed,
    setup_logging,
    stdout_failure,
    watch_stdout,
)
from builder.util.errors import PifleetError, Terminated, UserError
from builder.util.terminal import inert

log = logging.getLogger("pifleet")

Handler = Callable[[argparse.Namespace], int]


def _handler(spec: str) -> Handler:
    """`module:function`, imported only for the command that runs (start-up stays fast)."""
    module, _, name = spec.partition(":")
    handler: Handler = getattr(importlib.import_module(module), name)
    return handler


class _Version(argparse.Action):
    """--version, which reads the installed package's metadata only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str) -> None:
        super().__init__(option_strings, dest, nargs=0, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> NoReturn:
        print(f"pifleet {version()}")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse with pifleet's error rule: a bad argument is one line and exit 2, naming the
    (sub)command and where its help is, never the whole usage."""

    _FOUND_BY = "_pifleet_parser"  # the innermost parser left with unknown arguments

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {inert(message)} (see `{self.prog} --help`)\n")

    def _get_value(self, action: argparse.Action, arg_string: str) -> Any:
        try:  # a `type=` check may raise UserError (builder/config/serverurl.py): name the option
            return super()._get_value(action, arg_string)
        except UserError as exc:
            raise argparse.ArgumentError(action, str(exc)) from None

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and not hasattr(parsed, self._FOUND_BY):
            setattr(parsed, self._FOUND_BY, self)  # a subcommand's parser returns first
        return parsed, extras

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        found: _Parser = vars(parsed).pop(self._FOUND_BY, self)
        if extras:
            found.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def _parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = _Parser(
        prog="pifleet",
        description="Build, personalize, flash and boot-test Raspberry Pi images for a K3s fleet.",
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log every command run")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _COMMANDS:
        register(sub)
    return parser


def _register_build(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("build", help="build the fleet's golden image from a config file")
    p.add_argument("config", help="fleet YAML file")
    p.add_argument("--base", metavar="PATH", help="use this base image file (overrides base:)")
    p.add_argument("--k3s-binary", metavar="PATH", help="use this K3s binary (overrides k3s:)")
    p.add_argument("-o", "--output-dir", metavar="DIR", help="overrides output.dir")
    p.add_argument(
        "--per-device", action="store_true", help="also write <host>.img for every device"
    )
    p.set_defaults(handler="builder.build:command")


def _register_inspect(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("inspect", help="show what is inside an image")
    p.add_argument("image", help="image file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler="builder.inspect:command")


def _register_lint(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("lint", help="check a built image's seed, cmdline.txt, config.txt and K3s")
    p.add_argument("image", help="image file")
    p.add_argument("--test-standin", action="store_true", help="accept a non-ELF K3s test stand-in")
    p.set_defaults(handler="builder.lint:command")


def _register_personalize(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "personalize", help="write one device's identity into a copy of the golden image"
    )
    p.add_argument(
        "image", help="golden image built by `pifleet build` (or an SD card with --in-place)"
    )
    p.add_argument("--config", required=True, help="the fleet YAML the image was built from")
    p.add_argument("--device", required=True, metavar="HOST", help="host name of the device")
    p.add_argument(
        "-o", "--output", metavar="PATH", help="output image (default: <dir>/<HOST>.img)"
    )
    p.add_argument("--in-place", action="store_true", help="personalize IMAGE itself")
    p.add_argument("--rotate-keys", action="store_true", help="new SSH host key and node password")
    p.set_defaults(handler="builder.fleet.personalize:command")


def _register_test_server(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from builder.testserver.serve import add_arguments

    p = sub.add_parser("test-server", help="run the K3s test server (a protocol stand-in, not K3s)")
    add_arguments(p)
    p.set_defaults(handler="builder.testserver.serve:command")


def _register_token(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from builder.config.serverurl import output_file, server_url, timeout

    p = sub.add_parser("token", help="join token tools")
    tsub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    check = tsub.add_parser("check", help="check a K3s server and token: CA pin, token accepted")
    check.add_argument("--server", required=True, type=server_url, help="https://host:6443")
    check.add_argument("--token-file", required=True)
    check.add_argument("--timeout", type=timeout, default=10.0, help="seconds")
    check.add_argument("--role", choices=("agent", "server"), default="agent")
    check.set_defaults(handler="builder.config.token:check_command")
    pin = tsub.add_parser(
        "pin",
        help="pin a token to the server's CA: show its fingerprint, write K10<hash>::... "
        "(--kind kubeadm: show the CA's pin for cluster.ca_cert_hashes)",
    )
    pin.add_argument("server", type=server_url, help="https://host:6443")
    pin.add_argument(
        "--kind",
        choices=("k3s", "kubeadm"),
        default="k3s",
        help="the cluster's kind, as cluster.kind (default k3s); never guessed from the token",
    )
    pin.add_argument("--token-file", help="the token to pin (k3s; not with --kind kubeadm)")
    pin.add_argument(
        "-o",
        "--output",
        type=output_file,
        help="where the pinned token goes (0600; required for k3s), or with --kind kubeadm the "
        "fleet file's ca_cert_hashes lines (0644; default: printed)",
    )
    pin.add_argument("--yes", action="store_true", help="do not ask (scripts)")
    pin.add_argument("--role", choices=("agent", "server"), help="default agent")
    pin.add_argument("--timeout", type=timeout, default=10.0, help="seconds")
    pin.set_defaults(handler="builder.config.pin:command")


def _register_base(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "base", help="build (or reuse) a QEMU-bootable base laid out like Pi OS Trixie"
    )
    p.add_argument("--arch", choices=("arm64", "armhf"), default="arm64")
    p.add_argument("--suite", default="trixie", help="Debian suite: trixie (default) or bookworm")
    p.add_argument(
        "--mirror",
        help="Debian mirror URL, or a whole sources.list line (default: http://deb.debian.org/debian)",
    )
    p.add_argument(
        "-o", "--output", metavar="PATH", help="copy the image here (else print its cache path)"
    )
    p.add_argument(
        "--format",
        choices=("cloudinit", "systemd"),
        default="cloudinit",
        help="first-boot seed format: cloudinit (default; cloud-init as Pi OS Trixie) or systemd "
        "(no cloud-init, NetworkManager, firstrun.sh as Pi OS Bookworm)",
    )
    p.add_argument("--rebuild", action="store_true", help="build again even when cached")
    p.set_defaults(handler="builder.bases.debian:command")


def _register_boot_test(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "boot-test", help="boot an image under QEMU and prove it joins a K3s server",
        epilog=MODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument(
        "image", help="the image to test (never modified: a copy-on-write overlay is used)"
    )
    p.add_argument(
        "--timeout", type=float, default=900, help="seconds until the node must have joined"
    )
    p.add_argument(
        "--kernel",
        help="kernel to boot (default: the image's /boot/vmlinuz, else for a Raspberry Pi "
        "kernel Debian's generic one, fetched and cached)",
    )
    p.add_argument("--initrd", help="initrd to boot with --kernel")
    p.add_argument(
        "--machine",
        default="virt",
        choices=("virt", "raspi3b", "raspi2b"),
        help="QEMU machine: virt (default), or a Raspberry Pi board booting the image's own "
        "kernel and device tree as the firmware picks them (raspi3b: arm64, raspi2b: armhf)",
    )
    p.add_argument("--server", help="a real K3s server URL (default: start the K3s test server)")
    p.add_argument("--token-file", help="token for --server")
    p.add_argument("--junit", metavar="FILE", help="write a JUnit XML report")
    p.add_argument("--keep", metavar="DIR", help="keep the VM disk and console log in DIR")
    p.set_defaults(handler="builder.qemu.boottest:command")


def _register_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="base -> build the example -> boot-test it under QEMU -> joined"
    )
    p.add_argument("--config", help="fleet YAML (default: the bundled config/example.yaml)")
    p.add_argument("--arch", choices=("arm64", "armhf"), help="overrides the config's arch")
    p.add_argument("--suite", default="trixie", help="Debian suite of the base (as `base`)")
    p.add_argument(
        "-o",
        "--output-dir",
        metavar="DIR",
        help="overrides output.dir (the bundled example: ./out)",
    )
    p.add_argument("--timeout", type=float, default=900)
    p.set_defaults(handler="builder.demo:command")


def _register_sources(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("images", help="list the catalog of base images")
    p.set_defaults(handler="builder.sources.catalog:command")
    p = sub.add_parser(
        "fetch", help="download and verify a config's base and K3s, for offline builds"
    )
    p.add_argument("config", help="fleet YAML file")
    p.set_defaults(handler="builder.sources.obtain:fetch_command")


def _register_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "status", help="which of the fleet's devices joined the cluster, which did not"
    )
    p.add_argument("config", help="fleet YAML file")
    p.add_argument("--kubeconfig", metavar="FILE", help="default: $KUBECONFIG, ~/.kube/config")
    p.add_argument("--watch", action="store_true", help="redraw as nodes join, until all are Ready")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between --watch reads")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds for one read, in all")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler="builder.fleet.status:command")


def _register_diagnose(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "diagnose", help="what a pulled card says about its first boot, and what to do"
    )
    p.add_argument("target", help="the card (/dev/sdX) or a disk image read back from a device")
    p.add_argument("--journal", action="store_true", help="also show the last journal lines")
    p.add_argument("--json", action="store_true", help="the report as the agent wrote it")
    p.set_defaults(handler="builder.fleet.diagnose:command")


def _register_cluster(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cluster", help="create a K3s cluster's CA set and token before any Pi boots"
    )
    csub = p.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    init = csub.add_parser("init", help="make cluster/ beside the fleet file; print the CA hash")
    init.add_argument("config", help="fleet YAML with cluster.create: true")
    init.set_defaults(handler="builder.cluster.create:init_command")
    show = csub.add_parser("show", help="the cluster's CA hash and expiry dates (no secrets)")
    show.add_argument("config", help="fleet YAML with cluster.create: true")
    show.set_defaults(handler="builder.cluster.create:show_command")


_COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _register_build,
    _register_inspect,
    _register_lint,
    _register_personalize,
    _register_test_server,
    _register_token,
    _register_base,
    _register_boot_test,
    _register_demo,
    lambda sub: importlib.import_module("builder.fleet.flashargs").register(sub),  # flash
    _register_sources,
    _register_cluster,
    _register_status,
    _register_diagnose,
    lambda sub: importlib.import_module("builder.fleet.retire").register(sub),  # node retire
]


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    watch_stdout()
    try:
        args = _parser().parse_args(argv)  # --help, --version and bad arguments exit here
        setup_logging(args.verbose, args.quiet)
        signal.signal(signal.SIGTERM, _on_sigterm)
        code = _run(args)
    except SystemExit:
        exit_if_stdout_failed()
        raise
    except OSError:
        if stdout_failure() is None:
            raise
        exit_if_stdout_failed()  # exits
        raise
    exit_if_stdout_failed()
    return code


# The last second a FAT directory entry can hold, 2107-12-31 23:59:59 UTC: the boot
# partition's timestamps come from SOURCE_DATE_EPOCH, and mtools silently wraps a later one
# (to 1980, or 2066 for 99999999999).
LAST_FAT_TIME = 4354819199


def check_environment() -> None:
    """The environment variables every command may read, checked before any work."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "")
    if raw and not (raw.isascii() and raw.isdigit() and int(raw) <= LAST_FAT_TIME):
        raise UserError(
            f"SOURCE_DATE_EPOCH: must be a whole number of seconds from 0 to {LAST_FAT_TIME} "
            f"(2107-12-31, the last date a FAT timestamp holds), got {raw[:40]!r}"
        )


def _run(args: argparse.Namespace) -> int:
    try:
        check_environment()
        return _handler(args.handler)(args)
    except PifleetError as exc:
        print(f"pifleet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, Terminated) as exc:
        from builder.util.atomic import remove_own_temps
        from builder.util.private import remove_own_dirs

        remove_own_dirs()  # staging a signal caught between its creation and its clean-up
        remove_own_temps()  # likewise for outputs being written
        print("pifleet: interrupted; partial outputs removed", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 143
    except Exception as exc:  # a bug: still one line; the traceback with -v
        if isinstance(exc, OSError) and stdout_failure() is not None:
            raise
        if args.verbose:
            raise
        print(
            f"pifleet: internal error: {type(exc).__name__}: {exc} (run with -v for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
