"""A server's clock against its CA: K3s must not start while the clock is before the CA's
notBefore, or every certificate it checks is "not yet valid".

| K3s rule | K3s file:function |
|---|---|
| the CA hash is taken from the chain `certs[0].Verify` builds at the current time; when that fails (a certificate not yet valid) the hash falls back to the whole body, so a clock before notBefore reads as `token CA hash does not match` | pkg/clientaccess/token.go:hashCA, validateCAHash |
| the server's certificates are made and checked at the current time | pkg/daemons/control/deps/deps.go; crypto/x509 verify.go:isValid |

The first server has no server to take the time from (firstboot/machine.py's clock state
goes on without time sync): so before K3s starts, a server waits for the clock to pass the
latest notBefore of its pinned CA bundle, up to the join config's clock_sync_timeout, and
otherwise gives a clock verdict rather than the false CA mismatch K3s would report.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Tuple

from firstboot import x509
from firstboot.clock import Clock
from firstboot.paths import Root
from firstboot.retry import Backoff, Terminal


def _stamp(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def latest_not_before(bundle: bytes) -> Optional[Tuple[float, str]]:
    """(the latest notBefore in the bundle, that certificate's name); None when it holds none."""
    found: Optional[Tuple[float, str]] = None
    for pem in x509.split(bundle):
        try:
            cert = x509.parse(pem)
            when = x509.not_before(cert)
        except x509.CertError:
            continue
        if found is None or when > found[0]:
            found = (when, cert.name())
    return found


def wait_for_ca(
    root: Root,
    ca_path: str,
    clock: Clock,
    timeout: float,
    backoff: Backoff,
    progress: Callable[[str], None],
) -> None:
    """Return once the clock is past the CA's notBefore; Terminal (a clock verdict) after
    `timeout` seconds of waiting."""
    try:
        found = latest_not_before(root(ca_path).read_bytes())
    except OSError:
        return  # nothing pinned to judge by (verify pins it before start)
    if found is None or clock.now() >= found[0]:
        return
    valid_from, name = found
    progress(
        "the clock (" + _stamp(clock.now()) + ") is before the CA " + name + " is valid ("
        + _stamp(valid_from) + "); waiting for time sync before starting K3s"
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        backoff.wait()
        if clock.now() >= valid_from:
            return
    raise Terminal(
        "clock: this server's clock (" + _stamp(clock.now()) + ") is still before its CA's "
        "notBefore (" + _stamp(valid_from) + ") after " + str(int(timeout)) + " s: K3s's "
        "certificates would not be valid yet (and K3s would blame the token's pin, wrongly); "
        "give the server NTP (systemd-timesyncd) or set its clock"
    )
