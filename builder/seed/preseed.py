"""`rpi-preseed` format: one rpi-preseed.toml in the boot partition, applied once by the
rpi-preseed package's units (they run when the file exists; no command-line word needed).

Keys follow rpi-preseed's own schema (schema/rpi-preseed.schema in raspberrypi/rpi-preseed);
the subset pifleet writes is checked by builder/templates/rpi-preseed.schema.json, in tests and by
`pifleet lint`. Values are TOML basic strings with only `\\` and `"` escaped and line breaks
dropped, the subset rpi-preseed's shell parser reads.

rpi-preseed takes one `[user]`: the fleet's first user goes there, the others are created by
`runcmd.early` commands. The Wi-Fi password is the derived PSK (`password_encrypted`), and
rpi-preseed overwrites it with a redaction marker once applied. A per-device SSH host key is
not written in this format (it would stay in the file): such devices generate their own.
"""

from __future__ import annotations

from builder.config.model import User
from builder.layout import PRESEED
from builder.seed.base import ImageTraits, Seed, SeedFormat, SeedInput
from builder.seed.base import shell_quote as q

CONFIG_VERSION = "1.1"

Value = str | bool | list[str]


def render(inp: SeedInput, traits: ImageTraits) -> Seed:
    sections: list[tuple[str, dict[str, Value]]] = []
    if inp.hostname:
        sections.append(("system", {"hostname": inp.hostname}))
    if inp.users:
        sections += _first_user(inp.users[0])
    if inp.wifi is not None:
        wlan: dict[str, Value] = {"ssid": inp.wifi.ssid}
        if inp.wifi_psk:
            wlan |= {"password": inp.wifi_psk, "password_encrypted": True}
        wlan |= {"hidden": inp.wifi.hidden, "country": inp.wifi.country}
        sections.append(("wlan", wlan))
    if inp.static is not None:
        ethernet: dict[str, Value] = {"method": "static", "address": inp.static.address}
        if inp.static.gateway:
            ethernet["gateway"] = inp.static.gateway
        if inp.static.dns:
            ethernet["dns"] = list(inp.static.dns)
        sections.append(("ethernet", ethernet | {"interface": inp.ethernet}))
    locale: dict[str, Value] = {
        "timezone": inp.timezone,
        "locales": [inp.locale],
        "lang": inp.locale,
    }
    if inp.keyboard:
        locale = {"keymap": inp.keyboard} | locale
    sections.append(("locale", locale))
    interfaces = _interfaces(inp)
    if interfaces:
        sections.append(("interfaces", interfaces))
    early = [cmd for user in inp.users[1:] for cmd in _extra_user(user)]
    if early:
        sections.append(("runcmd", {"early": early}))
    return Seed({PRESEED: dump(sections).encode()})


FORMAT = SeedFormat(
    name="rpi-preseed",
    render=render,
    files=(PRESEED,),
    needs="rpi-preseed",
    marker="/usr/lib/rpi-preseed",
    sign=PRESEED,
)


def _first_user(user: User) -> list[tuple[str, dict[str, Value]]]:
    entry: dict[str, Value] = {"name": user.name}
    if user.sudo:
        entry["passwordless_sudo"] = True
    entry["groups"] = ["sudo", *user.groups] if user.sudo else list(user.groups)
    out = [("user", entry)]
    if user.ssh_authorized_keys:
        ssh: dict[str, Value] = {
            "enabled": True,
            "password_authentication": False,
            "authorized_keys": list(user.ssh_authorized_keys),
        }
        out.append(("ssh", ssh))
    return out


def _extra_user(user: User) -> list[str]:
    name, home = q(user.name), q(f"/home/{user.name}")
    cmds = [f"id -u {name} >/dev/null 2>&1 || useradd -m -s {q(user.shell)} {name}"]
    groups = ",".join(user.groups)
    if groups:
        cmds.append(f"usermod -a -G {q(groups)} {name}")
    if user.sudo:
        drop_in = q(f"/etc/sudoers.d/010_{user.name}-nopasswd")
        cmds.append(
            f"echo {q(user.name + ' ALL=(ALL) NOPASSWD:ALL')} > {drop_in} && chmod 0440 {drop_in}"
        )
    if user.ssh_authorized_keys:
        # One quoted word per key, printed as is: `%b` would turn a `\n` in a key's comment
        # into a line of its own.
        keys = " ".join(q(key) for key in user.ssh_authorized_keys)
        cmds.append(
            f"install -o {name} -m 700 -d {home}/.ssh && printf '%s\\n' {keys} "
            f"> {home}/.ssh/authorized_keys && chown {name}: {home}/.ssh/authorized_keys "
            f"&& chmod 600 {home}/.ssh/authorized_keys"
        )
    return cmds


def _interfaces(inp: SeedInput) -> dict[str, Value]:
    hw = inp.hardware
    out: dict[str, Value] = {n: True for n in ("i2c", "spi", "onewire") if getattr(hw, n)}
    if hw.usb_gadget:
        out["usb_gadget"] = True
    if hw.serial:
        out["serial"] = "hardware"
    return out


def dump(sections: list[tuple[str, dict[str, Value]]]) -> str:
    """The TOML text: config_version, then one block per section, one blank line between."""
    blocks = [f"config_version = {_string(CONFIG_VERSION)}"]
    for name, values in sections:
        lines = [f"[{name}]"] + [f"{key} = {_value(v)}" for key, v in values.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[\n" + "".join(f"  {_string(v)},\n" for v in value) + "]"
    return _string(value)


def _string(text: str) -> str:
    clean = text.replace("\r", "").replace("\n", "")
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'
