"""Every string key of the schema, fuzzed with what breaks files and shells: newline, CR, NUL,
quotes, backslash, `$()`, a backtick, `..`, `EOF`, printf directives (issue 21, item 3).

Each value is either refused (a one-line UserError: the CLI's exit 2) or it reaches each device
file verbatim and inert, as that file's own consumer reads it:

| file | consumer |
|---|---|
| firstrun.sh | `sh -n`, then run by `sh` in a throwaway root (tests/test_injection.py): nothing planted, each file it writes holds the value |
| user-data, network-config, meta-data | YAML, then cloud-init's own schema validator and netplan-v2 parser (the host's cloud-init), in one batch per key |
| rpi-preseed.toml | tomllib and its schema (`preseed_problems`) |
| NetworkManager keyfiles | libnm's `NM.keyfile_read` (python3-gi, gir1.2-nm-1.0), in one batch per key |

Seeds are rendered from the loaded FleetConfig (no image builds). hypothesis runs derandomized,
so CI sees the same examples every time.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.config.fleet import load
from builder.config.schema import SCHEMA_PATH
from builder.layout import PRESEED
from builder.seed import cloudinit, preseed, systemd
from builder.seed.base import ImageTraits, SeedInput, seed_input
from builder.seed.checks import preseed_problems
from builder.util.errors import UserError
from tests.firstrun_sandbox import Ran, run_firstrun, userns_available
from tests.fleet_data import VALID, concrete, config_with, schema_keys

BARE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
PIECES = ["\n", "\r", "\0", "'", '"', "\\", "$(touch /PWNED)", "`touch /PWNED`", "..", "/",
          " ", "\t", ";", "#", "EOF", "%s", "%b", "\\n", "{", "}", "[", "]", "=", ":", ",", "*",
          "é", "a", "Z", "0", "-", "_", "."]  # fmt: skip
NASTY = st.lists(st.sampled_from(PIECES), min_size=1, max_size=8).map("".join)
VALUES = st.one_of(NASTY, NASTY.map(lambda s: "a" + s), st.text(max_size=12))
STATIC = {"network": {"static": {"address": "10.0.0.5/24", "gateway": "10.0.0.1"}}}
WIFI = {"network": {"wifi": {"ssid": "edge", "country": "DE"}}}
NM_DIR = "/etc/NetworkManager/system-connections"
EXAMPLES = 20


@dataclass
class Rendered:
    value: str
    inp: SeedInput
    user_data: dict[str, Any]
    meta_data: dict[str, Any]
    network: dict[str, Any]
    toml: dict[str, Any]
    ran: Ran | None  # None without user namespaces
    network_manager: bool


@dataclass
class Batch:
    """What the slow consumers (cloud-init, libnm) check once per key, after the examples."""

    cloud: list[dict[str, str]] = field(default_factory=list)
    keyfiles: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # text, expected


# -- where each key's value must arrive --------------------------------------------------------


def _user(r: Rendered, field_name: str, value: object) -> None:
    assert r.user_data["users"][0][field_name] == value
    if field_name == "name":
        assert r.toml["user"]["name"] == value


def check_shell(r: Rendered) -> None:
    _user(r, "shell", r.value)
    if r.ran:
        assert ["usermod", "-s", r.value, "ops"] in r.ran.calls


def check_group(r: Rendered) -> None:
    _user(r, "groups", r.value)
    assert r.toml["user"]["groups"] == [r.value]
    if r.ran:
        assert ["usermod", "-a", "-G", r.value, "ops"] in r.ran.calls


def check_key(r: Rendered) -> None:
    _user(r, "ssh_authorized_keys", [r.value])
    assert r.toml["ssh"]["authorized_keys"] == [r.value]
    if r.ran:
        assert r.ran.read("/home/ops/.ssh/authorized_keys") == r.value + "\n"


def check_ethernet(r: Rendered) -> None:
    assert list(r.network["network"]["ethernets"]) == [r.value]
    assert r.toml["ethernet"]["interface"] == r.value
    if r.ran and not r.network_manager:
        text = r.ran.read(f"/etc/systemd/network/10-pifleet-{r.value}.network")
        assert f"\nName={r.value}\n" in "\n" + text


def check_ssid(r: Rendered) -> None:
    assert list(r.network["network"]["wifis"]["wlan0"]["access-points"]) == [r.value]
    assert r.toml["wlan"]["ssid"] == r.value
    if r.ran and not r.network_manager:
        text = r.ran.read("/etc/wpa_supplicant/wpa_supplicant.conf")
        line = next(ln for ln in text.splitlines() if ln.startswith("\tssid="))[6:]
        got = line[1:-1] if line.startswith('"') else bytes.fromhex(line).decode()
        assert got == r.value


def check_timezone(r: Rendered) -> None:
    assert r.user_data["timezone"] == r.value and r.toml["locale"]["timezone"] == r.value
    if r.ran:
        assert r.ran.read("/etc/timezone") == r.value + "\n"


def check_locale(r: Rendered) -> None:
    assert r.user_data["locale"] == r.value and r.toml["locale"]["lang"] == r.value
    if r.ran:
        assert ["update-locale", f"LANG={r.value}"] in r.ran.calls


def check_hostname(r: Rendered) -> None:
    assert r.user_data["hostname"] == r.value and r.meta_data["local-hostname"] == r.value
    assert r.toml["system"]["hostname"] == r.value
    if r.ran:
        assert r.ran.read("/etc/hostname") == r.value + "\n"


def check_keyboard(r: Rendered) -> None:
    assert r.user_data["keyboard"]["layout"] == r.value and r.toml["locale"]["keymap"] == r.value
    if r.ran:
        assert f'XKBLAYOUT="{r.value}"' in r.ran.read("/etc/default/keyboard").splitlines()


def check_nothing(r: Rendered) -> None:
    """A key that reaches no seed file (host paths, URLs, the join config): refused or inert."""


# key -> (values to try, what else the config needs, where the value must arrive). Each key
# also gets valid values that carry the troublesome characters its rules allow.
DEVICE_KEYS: dict[str, tuple[st.SearchStrategy[str], dict[str, Any], Callable[[Rendered], None]]] = {
    "users[].name": (st.sampled_from(["ops2", "a_b-c"]) | VALUES, {}, lambda r: _user(r, "name", r.value)),
    "users[].shell": (st.sampled_from(["/bin/sh", "/usr/bin/zsh+x"]) | VALUES.map(lambda s: "/bin/" + s), {}, check_shell),
    "users[].groups": (st.sampled_from(["adm", "_x-1"]) | VALUES, {}, check_group),
    "users[].ssh_authorized_keys": (
        st.sampled_from([f"{BARE_KEY} a'b\"c $(x) `y` \\n %b EOF"]) | VALUES | VALUES.map(lambda s: f"{BARE_KEY} {s}"),
        {}, check_key,
    ),
    "network.ethernet": (st.sampled_from(["eth0", "end0.10", "wl_x-1"]) | VALUES.map(lambda s: "eth" + s), STATIC, check_ethernet),
    "network.wifi.ssid": (st.sampled_from(["EOF'$(x)`y`\\ ;#", " lead", "é;1;"]) | VALUES, WIFI, check_ssid),
    "timezone": (st.sampled_from(["Europe/Berlin", "Etc/GMT+5"]) | VALUES.map(lambda s: "Europe/" + s), {}, check_timezone),
    "locale": (st.sampled_from(["de_DE.UTF-8", "sr_RS@latin"]) | VALUES, {}, check_locale),
    "devices[].hostname": (st.sampled_from(["pi-2", "a.b"]) | VALUES, {}, check_hostname),
    "seed.keyboard": (st.sampled_from(["de", "gb"]) | VALUES, {}, check_keyboard),
}  # fmt: skip


def string_keys() -> list[str]:
    """Every key of the schema whose value (or list item) is a string."""
    schema = json.loads(SCHEMA_PATH.read_text())
    defs = schema["$defs"]

    def node_at(path: str) -> dict[str, Any]:
        node: dict[str, Any] = schema
        for part in concrete(path).replace("[0]", ".[]").split("."):
            if "$ref" in node:
                node = defs[node["$ref"].rsplit("/", 1)[1]]
            if part == "[]":
                node = node["items"]
                continue
            props = [v for v in [node, *node.get("oneOf", [])] if "properties" in v]
            node = props[0]["properties"][part]
        return defs[node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node

    def is_string(node: dict[str, Any]) -> bool:
        variants = [node, *node.get("oneOf", []), node.get("items") or {}]
        return any(v.get("type") == "string" for v in variants)

    return [k for k in schema_keys(schema, defs) if is_string(node_at(k))]


# -- rendering and running -----------------------------------------------------------------------


def with_value(path: str, value: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The valid config with `value` at `path` (a list key gets a one-item list)."""
    schema_list = path in ("users[].groups", "users[].ssh_authorized_keys") or path.endswith(
        ("dns", "node_taints", "kubelet_args", "servers", "labels", "taints", "formats")
    )
    return config_with(path, [value] if schema_list else value, extra)


def render_all(inp: SeedInput, value: str, nm: bool, tmp: Path, sandbox: bool = True) -> Rendered:
    ci = cloudinit.render(inp, ImageTraits("cloudinit")).files
    toml_text = preseed.render(inp, ImageTraits("rpi-preseed")).files[PRESEED]
    assert preseed_problems(toml_text) == [], toml_text
    script = systemd.render(inp, ImageTraits("systemd", network_manager=nm)).files["/firstrun.sh"]
    assert subprocess.run(["sh", "-n"], input=script).returncode == 0, script
    ran = None
    if sandbox and userns_available():
        ran = run_firstrun(script, tmp)
        assert ran.returncode == 0, ran.stderr
        assert ran.planted() == [], ran.planted()
    return Rendered(
        value=value,
        inp=inp,
        user_data=yaml.safe_load(ci["/user-data"]),
        meta_data=yaml.safe_load(ci["/meta-data"]),
        network=yaml.safe_load(ci["/network-config"]),
        toml=tomllib.loads(toml_text.decode()),
        ran=ran,
        network_manager=nm,
    )


def collect(r: Rendered, batch: Batch, files: dict[str, bytes]) -> None:
    batch.cloud.append({k: files[k].decode() for k in ("/user-data", "/network-config")})
    if r.ran is None or not r.network_manager:
        return
    if r.inp.static is not None:
        text = r.ran.read(f"{NM_DIR}/pifleet-{r.inp.ethernet}.nmconnection")
        batch.keyfiles.append((text, {"interface_name": r.inp.ethernet}))
    if r.inp.wifi is not None:
        text = r.ran.read(f"{NM_DIR}/preconfigured.nmconnection")
        batch.keyfiles.append((text, {"ssid": r.inp.wifi.ssid}))


def fuzz(key: str, values: st.SearchStrategy[str], extra: dict[str, Any],
         check: Callable[[Rendered], None], tmp_path: Path) -> Batch:  # fmt: skip
    batch = Batch()
    outcomes = {"refused": 0, "accepted": 0}

    # Keys that reach no seed file: fewer examples, firstrun.sh checked by `sh -n` alone.
    reaches = check is not check_nothing

    @settings(max_examples=EXAMPLES if reaches else EXAMPLES // 2, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(value=values, nm=st.booleans())
    def run(value: str, nm: bool) -> None:
        with tempfile.TemporaryDirectory(dir=tmp_path) as name:
            tmp = Path(name)
            (tmp / "token").write_text("x")
            (tmp / "fleet.yaml").write_text(yaml.safe_dump(with_value(key, value, extra)))
            try:
                config = load(tmp / "fleet.yaml")
                inp = seed_input(config, config.devices[0])  # reads password_env
            except UserError as exc:
                assert "\n" not in str(exc) and "\r" not in str(exc), str(exc)
                outcomes["refused"] += 1
                return
            outcomes["accepted"] += 1
            rendered = render_all(inp, value, nm, tmp, sandbox=reaches)
            check(rendered)
            files = cloudinit.render(rendered.inp, ImageTraits("cloudinit")).files
            collect(rendered, batch, files)

    run()
    assert outcomes["refused"] > 0, f"{key}: no fuzzed value was refused: {outcomes}"
    if reaches:
        assert outcomes["accepted"] > 0, f"{key}: no value reached the device: {outcomes}"
    return batch


# -- the batched consumers ----------------------------------------------------------------------

_CLOUD = """
import json, sys, yaml
from cloudinit.config.schema import get_schema, validate_cloudconfig_schema
from cloudinit.net import network_state
schema, out = get_schema(), []
for item in json.load(sys.stdin):
    try:
        validate_cloudconfig_schema(yaml.safe_load(item["/user-data"]), schema, strict=True,
                                    log_details=False)
        ns = network_state.parse_net_config_data(yaml.safe_load(item["/network-config"])["network"])
        out.append({"ok": True, "interfaces": sorted(i["name"] for i in ns.iter_interfaces())})
    except Exception as exc:
        out.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
print(json.dumps(out))
"""
_NM = """
import json, sys
import gi
gi.require_version("NM", "1.0")
from gi.repository import GLib, NM
out = []
for text in json.load(sys.stdin):
    kf = GLib.KeyFile()
    kf.load_from_data(text, len(text.encode()), GLib.KeyFileFlags.NONE)
    conn = NM.keyfile_read(kf, "/etc/NetworkManager/system-connections",
                           NM.KeyfileHandlerFlags.NONE, None, None)
    conn.normalize()  # as NetworkManager does with a keyfile it loads
    wifi, con = conn.get_setting_wireless(), conn.get_setting_connection()
    ssid = bytes(wifi.get_ssid().get_data()).decode() if wifi else None
    out.append({"ssid": ssid, "interface_name": con.get_interface_name()})
print(json.dumps(out))
"""


def host_python(code: str) -> bool:
    return (
        Path("/usr/bin/python3").exists()
        and subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True).returncode == 0
    )


def verify(batch: Batch, key: str) -> None:
    if batch.cloud and host_python("import cloudinit.config.schema"):
        out = subprocess.run(["/usr/bin/python3", "-c", _CLOUD], input=json.dumps(batch.cloud),
                             capture_output=True, text=True, check=True)  # fmt: skip
        for item, result in zip(batch.cloud, json.loads(out.stdout), strict=True):
            assert result["ok"], (result, item)
            if key == "network.ethernet":
                name = next(iter(yaml.safe_load(item["/network-config"])["network"]["ethernets"]))
                assert name in result["interfaces"], (result, name)
    nm = "import gi; gi.require_version('NM', '1.0'); from gi.repository import NM"
    if batch.keyfiles and host_python(nm):
        texts = [text for text, _ in batch.keyfiles]
        out = subprocess.run(["/usr/bin/python3", "-c", _NM], input=json.dumps(texts),
                             capture_output=True, text=True, check=True)  # fmt: skip
        for (text, expected), got in zip(batch.keyfiles, json.loads(out.stdout), strict=True):
            assert {k: got[k] for k in expected} == expected, text


# -- the tests ---------------------------------------------------------------------------------


def test_every_string_key_is_fuzzed() -> None:
    """A new string key of the schema is fuzzed: with a check of where it arrives when it
    reaches a seed file, else as one that must be refused or inert."""
    keys = string_keys()
    assert {"timezone", "network.ethernet", "users[].ssh_authorized_keys"} <= set(keys)
    assert set(DEVICE_KEYS) <= set(keys)


@pytest.mark.parametrize("key", sorted(DEVICE_KEYS))
def test_value_is_refused_or_reaches_the_device_verbatim(tmp_path: Path, key: str) -> None:
    values, extra, check = DEVICE_KEYS[key]
    verify(fuzz(key, values, extra, check, tmp_path), key)


@pytest.mark.parametrize("key", sorted(set(string_keys()) - set(DEVICE_KEYS)))
def test_other_strings_are_refused_or_inert(tmp_path: Path, key: str) -> None:
    """Keys that reach no seed file (host paths and URLs, K3s and cluster settings, which the
    join config carries as JSON): refused in one line, or the seeds stay valid and inert."""
    extra = WIFI if key.startswith("network.wifi") else {}
    extra = STATIC if key.startswith("network.static") else extra
    if key.startswith("devices[].wifi"):
        extra = {"devices": [{"wifi": {"ssid": "edge", "country": "DE"}}]}
    if key in ("devices[].gateway", "devices[].dns"):
        extra = {"devices": [{"address": "10.0.0.5/24"}]}
    fuzz(key, VALUES, extra, check_nothing, tmp_path)


def test_the_fuzzed_config_is_valid_without_the_value(tmp_path: Path) -> None:
    """The base every example changes loads and renders, so a refusal is the value's doing."""
    (tmp_path / "token").write_text("x")
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump({**VALID, **STATIC}))
    config = load(tmp_path / "fleet.yaml")
    render_all(seed_input(config, config.devices[0]), "", False, tmp_path)
