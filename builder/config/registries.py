"""`cluster.registries`: K3s's private registry configuration, checked at build and written
as `/etc/rancher/k3s/registries.yaml` (builder/steps/registries.py).

The file K3s reads is the `Registry` of rancher/wharfie `pkg/registries` (docs.k3s.io,
"Private Registry Configuration"): `mirrors` by registry name, each with `endpoint` URLs and
`rewrite` patterns; `configs` by registry host, each with `auth` and `tls`. pifleet takes the
same shape, except that a password comes from a file or the environment, like the token, and
the TLS files are files on the build host, which the build copies into the image.

| rule | follows |
|---|---|
| `mirrors.<name>`: a registry name (`docker.io`, `registry.lan:5000`) or `*`; `endpoint`: a list of `http://` or `https://` URLs ("unsupported scheme" otherwise); an empty list leaves the default endpoint (and with the embedded registry, Spegel) | wharfie registries.go:getEndpointForHost, RoundTrip; docs.k3s.io registry-mirror |
| `mirrors.<name>.rewrite`: pattern -> replacement; a pattern that does not compile is skipped by K3s with only a warning, so it is refused here, including what Python's re takes and Go's regexp (RE2) does not (lookarounds, backreferences, possessive quantifiers, ...) | registries.go:Rewrite; Go regexp/syntax |
| `configs.<host>`: the endpoint's host (`host[:port]`), not the mirror's name | registries.go:getAuthenticatorForHost, getTLSConfigForHost |
| `auth`: `username` with `password_file` (0600) or `password_env`; or `auth_file`/`auth_env` (base64 user:password), `identitytoken_file`/`identitytoken_env` | registries.go (authn.AuthConfig: Username, Password, Auth, IdentityToken) |
| `tls`: `cert_file` needs `key_file` and the reverse ("cert file was specified, but no corresponding key file"); `ca_file`; `insecure_skip_verify` | registries.go:getTLSConfigForHost |
| a secret is one line, never printed nor logged; registries.yaml is 0600 from its first byte | pifleet's rule for the token (builder/config/token.py) |
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from builder.util.errors import UserError

Fail = Callable[[str, str], UserError]
HOST = re.compile(
    r"^(\*|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?)\Z"
)
SECRETS = ("password", "auth", "identitytoken")  # each as <name>_file or <name>_env
AUTH_KEYS = frozenset({"username", *(f"{s}_{how}" for s in SECRETS for how in ("file", "env"))})
TLS_KEYS = frozenset({"ca_file", "cert_file", "key_file", "insecure_skip_verify"})


@dataclass(frozen=True)
class Mirror:
    name: str
    endpoints: tuple[str, ...]
    rewrites: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SecretSource:
    """Where one credential comes from: a file (private to its owner) or a variable."""

    field: str  # password, auth, identitytoken
    file: Path | None
    env: str | None


@dataclass(frozen=True)
class RegistryConfig:
    host: str
    username: str | None
    secrets: tuple[SecretSource, ...]
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    insecure_skip_verify: bool


@dataclass(frozen=True)
class Registries:
    mirrors: tuple[Mirror, ...] = ()
    configs: tuple[RegistryConfig, ...] = ()


def read(value: Any, key: str, rel: Callable[[str], Path], fail: Fail) -> Registries | None:
    """`cluster.registries` checked: one-line errors naming the key."""
    if value is None:
        return None
    _mapping(value, key, fail, {"mirrors", "configs"})
    mirrors = tuple(
        _mirror(name, item, f"{key}.mirrors.{name}", fail)
        for name, item in _mapping(value.get("mirrors") or {}, f"{key}.mirrors", fail).items()
    )
    configs = tuple(
        _config(host, item, f"{key}.configs.{host}", rel, fail)
        for host, item in _mapping(value.get("configs") or {}, f"{key}.configs", fail).items()
    )
    return Registries(mirrors, configs)


def _mapping(value: Any, key: str, fail: Fail, allowed: set[str] | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(key, "must be a mapping")
    unknown = sorted(str(k) for k in value if allowed is not None and k not in allowed)
    if unknown:
        raise fail(
            f"{key}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(allowed or ()))})"
        )
    return {str(k): v for k, v in value.items()}


def _host(name: str, key: str, fail: Fail) -> None:
    if not HOST.match(name):
        raise fail(key, "not a registry host (name[:port], as docker.io or registry.lan:5000)")


def _mirror(name: str, value: Any, key: str, fail: Fail) -> Mirror:
    _host(name, key, fail)
    item = _mapping(value, key, fail, {"endpoint", "rewrite"})
    endpoints = item.get("endpoint") or []
    if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
        raise fail(f"{key}.endpoint", "must be a list of URLs")
    for url in endpoints:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise fail(f"{key}.endpoint", f"{url!r}: K3s takes http:// or https:// URLs only")
    rewrites = _mapping(item.get("rewrite") or {}, f"{key}.rewrite", fail)
    for pattern, replacement in rewrites.items():
        if not isinstance(replacement, str):
            raise fail(f"{key}.rewrite.{pattern}", "the replacement must be a string")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise fail(
                f"{key}.rewrite", f"{pattern!r} is not a regular expression ({exc})"
            ) from None
        unknown = not_re2(pattern)
        if unknown:
            raise fail(f"{key}.rewrite", f"{pattern!r} uses {unknown}, which Go's regexp lacks")
    return Mirror(name, tuple(endpoints), tuple(rewrites.items()))


_GROUP_ONLY_PYTHON = {"=": "a lookahead", "!": "a lookahead", "<=": "a lookbehind",
                      "<!": "a lookbehind", "P=": "a backreference", "(": "a conditional",
                      ">": "an atomic group", "#": "a comment"}  # fmt: skip


def not_re2(pattern: str) -> str | None:
    """What Python's re takes and Go's regexp (RE2, which K3s compiles rewrites with) does
    not: lookarounds, backreferences, conditionals, atomic groups, possessive quantifiers,
    `\\Z`, and flags other than i, m, s and U; None when there is none of these."""
    i, in_class = 0, False
    while i < len(pattern):
        c, after = pattern[i], pattern[i + 1 : i + 3]
        if c == "\\":
            if after[:1] in "123456789" and after[:1]:  # Go: an error even in a class
                return "a backreference"
            if after[:1] == "Z":
                return "\\Z (Go spells it \\z)"
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            i += 2 if after[:1] == "]" else 3 if after == "^]" else 1
            continue
        elif c == "(" and after[:1] == "?":
            rest = pattern[i + 2 : i + 4]
            for start, what in _GROUP_ONLY_PYTHON.items():
                if rest.startswith(start):
                    return what
            flags = re.match(r"[a-zA-Z-]*", pattern[i + 2 :])
            if (
                not rest.startswith(("P<", "<", ":"))
                and flags
                and set(flags.group()) - set("imsU-")
            ):
                return "a flag Go lacks (it has i, m, s and U)"
        elif c in "*+?}" and after[:1] == "+":
            return "a possessive quantifier"
        i += 1
    return None


def _config(
    host: str, value: Any, key: str, rel: Callable[[str], Path], fail: Fail
) -> RegistryConfig:
    _host(host, key, fail)
    item = _mapping(value, key, fail, {"auth", "tls"})
    auth = _mapping(item.get("auth") or {}, f"{key}.auth", fail, set(AUTH_KEYS))
    tls = _mapping(item.get("tls") or {}, f"{key}.tls", fail, set(TLS_KEYS))
    sources = []
    for name in SECRETS:
        given = [how for how in ("file", "env") if f"{name}_{how}" in auth]
        if len(given) > 1:
            raise fail(f"{key}.auth", f"give one of {name}_file or {name}_env")
        if given:
            text = auth[f"{name}_{given[0]}"]
            if not isinstance(text, str) or not text:
                raise fail(f"{key}.auth.{name}_{given[0]}", "must be a file name or variable name")
            file = rel(text) if given[0] == "file" else None
            sources.append(SecretSource(name, file, text if given[0] == "env" else None))
    username = auth.get("username")
    if username is not None and (not isinstance(username, str) or not username.isprintable()):
        raise fail(f"{key}.auth.username", "must be one line of text")
    if any(s.field == "password" for s in sources) and not username:
        raise fail(f"{key}.auth", "a password needs a username")
    for name, given in tls.items():
        if name != "insecure_skip_verify" and (not isinstance(given, str) or not given):
            raise fail(f"{key}.tls.{name}", "must be a file name")
    paths = {k: rel(v) for k, v in tls.items() if k != "insecure_skip_verify"}
    if bool(paths.get("cert_file")) != bool(paths.get("key_file")):
        one, other = (
            ("cert_file", "key_file") if paths.get("cert_file") else ("key_file", "cert_file")
        )
        raise fail(f"{key}.tls", f"{one} needs a {other} too (K3s refuses one without the other)")
    skip = tls.get("insecure_skip_verify", False)
    if not isinstance(skip, bool):
        raise fail(f"{key}.tls.insecure_skip_verify", "must be true or false")
    return RegistryConfig(host, username, tuple(sources), paths.get("ca_file"),
                          paths.get("cert_file"), paths.get("key_file"), skip)  # fmt: skip


def host(value: dict[str, Any], key: str, fail: Fail) -> str | None:
    """`cluster.<key>`: a registry host, as K3s's system-default-registry takes it."""
    given = value.get(key)
    if given is None:
        return None
    _host(str(given), f"cluster.{key}", fail)
    if given == "*":
        raise fail(f"cluster.{key}", "not a registry host (name[:port])")
    return str(given)
