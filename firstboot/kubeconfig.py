"""Reading the kubeconfig in kube-public/cluster-info without PyYAML (the device has none).

kubeadm writes it with client-go's `clientcmd.Write`: the v1 Config as JSON turned into YAML
by sigs.k8s.io/yaml (go-yaml): block style, two-space indent, sequences at their key's
indent, keys sorted, `""`/`null`/`{}` for empty values, long base64 on one line:

    apiVersion: v1
    clusters:
    - cluster:
        certificate-authority-data: LS0tLS1CRUdJTi...
        server: https://10.0.0.1:6443
      name: ""
    contexts: null
    current-context: ""
    kind: Config
    preferences: {}
    users: null

| rule | source |
|---|---|
| the ConfigMap holds one cluster, named "" (copied from admin.conf's current context) | kubernetes cmd/kubeadm/app/phases/bootstraptoken/clusterinfo/clusterinfo.go: CreateBootstrapConfigMapIfNotExists |
| the text is clientcmd's YAML (JSON is YAML too, and `clientcmd.Load` accepts both) | client-go tools/clientcmd/loader.go: Write, Load |
| clusters is a list of `{name, cluster}`; a cluster has `server` and `certificate-authority-data` (base64 PEM) | client-go tools/clientcmd/api/v1/types.go: NamedCluster, Cluster |
| the cluster used is the unnamed one, else the current context's | kubernetes cmd/kubeadm/app/util/kubeconfig/kubeconfig.go: GetClusterFromKubeConfig |

This reader takes JSON, or the block YAML above: mappings, sequences, plain, single- and
double-quoted scalars, `null`/`~`, `true`/`false`, `{}` and `[]`. Anything else (anchors,
aliases, tags, flow collections with content, block scalars, multi-line scalars, tabs,
duplicate keys, several documents) is refused with one line rather than guessed at. It is
stricter than kubeadm in one place: more than one cluster with the same name is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Dict, List, Optional, Tuple

Line = Tuple[int, str, int]  # indent, content, line number
_INDICATORS = "&*!|>%@`{[]},#?"


class KubeconfigError(ValueError):
    """The kubeconfig cannot be read; one line, naming no value from it."""


def _lines(text: str) -> List[Line]:
    found: List[Line] = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r").rstrip(" ")
        content = line.lstrip(" ")
        if not content or content.startswith("#"):
            continue
        if "\t" in line[: len(line) - len(content) + 1]:
            raise KubeconfigError(f"line {number}: a tab in the indentation")
        if content in ("---", "...") or content.startswith("--- "):
            if found or content != "---":
                raise KubeconfigError(f"line {number}: only one YAML document is read")
            continue
        found.append((len(line) - len(content), content, number))
    return found


def _quoted(text: str, number: int) -> Tuple[str, str]:
    """(value, rest of the line) of the quoted scalar at the start of `text`."""
    if text[0] == "'":
        at, out = 1, []
        while True:
            end = text.find("'", at)
            if end < 0:
                raise KubeconfigError(f"line {number}: an unterminated '...' string")
            out.append(text[at:end])
            if text[end + 1 : end + 2] == "'":
                out.append("'")
                at = end + 2
                continue
            return "".join(out), text[end + 1 :]
    at = 1
    while at < len(text):
        if text[at] == "\\":
            at += 2
            continue
        if text[at] == '"':
            try:
                value = json.loads(text[: at + 1])
            except ValueError:
                raise KubeconfigError(
                    f'line {number}: a "..." string with unknown escapes'
                ) from None
            return str(value), text[at + 1 :]
        at += 1
    raise KubeconfigError(f'line {number}: an unterminated "..." string')


def _scalar(text: str, number: int) -> Any:
    if text[0] in "'\"":
        value, rest = _quoted(text, number)
        if rest.strip() and not rest.strip().startswith("#"):
            raise KubeconfigError(f"line {number}: text after a quoted string")
        return value
    if " #" in text:
        text = text[: text.index(" #")].rstrip()
    if text in ("null", "~", "Null", "NULL"):
        return None
    if text in ("true", "false"):
        return text == "true"
    if text == "{}":
        return {}
    if text == "[]":
        return []
    if text[0] in _INDICATORS or text.startswith("- ") or ": " in text:
        raise KubeconfigError(f"line {number}: a YAML form this reader does not take")
    return text


def _split_key(content: str, number: int) -> Tuple[str, str]:
    """(key, rest after the colon) of a mapping entry."""
    if content[0] in "'\"":
        key, rest = _quoted(content, number)
        if not rest.startswith(":") or (len(rest) > 1 and rest[1] != " "):
            raise KubeconfigError(f"line {number}: expected key: value")
        return key, rest[1:].strip()
    if content.endswith(":"):
        key, rest = content[:-1], ""
    elif ": " in content:
        key, rest = content.split(": ", 1)
    else:
        raise KubeconfigError(f"line {number}: expected key: value")
    if not key or key[0] in _INDICATORS or key.startswith("- "):
        raise KubeconfigError(f"line {number}: a YAML form this reader does not take")
    return key, rest.strip()


def _is_entry(text: str, number: int) -> bool:
    """Whether a sequence item's text is `key: value` (a mapping opens on the dash's line)."""
    if text[0] in "'\"":
        return _quoted(text, number)[1].startswith(":")
    return text.endswith(":") or ": " in text


class _Reader:
    def __init__(self, lines: List[Line]) -> None:
        self.lines = lines
        self.at = 0

    def peek(self) -> Optional[Line]:
        return self.lines[self.at] if self.at < len(self.lines) else None

    def block(self, indent: int) -> Any:
        line = self.peek()
        assert line is not None
        if line[1] == "-" or line[1].startswith("- "):
            return self.sequence(indent)
        return self.mapping(indent)

    def value_after_key(self, indent: int, rest: str, number: int) -> Any:
        if rest:
            return _scalar(rest, number)
        nxt = self.peek()
        if nxt is None or nxt[0] < indent:
            return None
        if nxt[0] > indent:
            return self.block(nxt[0])
        if nxt[1] == "-" or nxt[1].startswith("- "):
            return self.sequence(indent)  # go-yaml writes a key's sequence at the key's indent
        return None

    def mapping(self, indent: int) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        while True:
            line = self.peek()
            if line is None or line[0] < indent:
                return out
            if line[0] > indent:
                raise KubeconfigError(f"line {line[2]}: unexpected indentation")
            if line[1] == "-" or line[1].startswith("- "):
                return out
            self.at += 1
            key, rest = _split_key(line[1], line[2])
            if key in out:
                raise KubeconfigError(f"line {line[2]}: a key given twice")
            out[key] = self.value_after_key(indent, rest, line[2])

    def sequence(self, indent: int) -> List[Any]:
        out: List[Any] = []
        while True:
            line = self.peek()
            if line is None or line[0] < indent:
                return out
            if line[0] > indent:
                raise KubeconfigError(f"line {line[2]}: unexpected indentation")
            if not (line[1] == "-" or line[1].startswith("- ")):
                return out
            rest = line[1][1:].lstrip(" ")
            if not rest:
                self.at += 1
                nxt = self.peek()
                out.append(self.block(nxt[0]) if nxt and nxt[0] > indent else None)
                continue
            inner = indent + len(line[1]) - len(rest)
            if _is_entry(rest, line[2]):
                self.lines[self.at] = (inner, rest, line[2])  # `- key: v` opens a mapping
                out.append(self.mapping(inner))
            else:
                self.at += 1
                out.append(_scalar(rest, line[2]))


def load(data: bytes) -> Dict[str, Any]:
    """The kubeconfig as a dict, from JSON or the YAML subset (module doc)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KubeconfigError("the kubeconfig is not UTF-8") from None
    if text.lstrip().startswith("{"):
        try:
            value: Any = json.loads(text)
        except ValueError:
            raise KubeconfigError("the kubeconfig is neither YAML nor valid JSON") from None
    else:
        lines = _lines(text)
        if not lines:
            raise KubeconfigError("the kubeconfig is empty")
        reader = _Reader(lines)
        value = reader.block(lines[0][0])
        if reader.peek() is not None:
            raise KubeconfigError(f"line {lines[reader.at][2]}: unexpected indentation")
    if not isinstance(value, dict):
        raise KubeconfigError("the kubeconfig is not a mapping")
    return value


def _named(config: Dict[str, Any], field: str, inner: str) -> Dict[str, Dict[str, Any]]:
    items = config.get(field) or []
    if not isinstance(items, list):
        raise KubeconfigError(f"the kubeconfig's {field} is not a list")
    out: Dict[str, Dict[str, Any]] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get(inner), dict):
            raise KubeconfigError(f"an entry of the kubeconfig's {field} has no {inner}")
        name = item.get("name")
        name = "" if name is None else name
        if not isinstance(name, str) or name in out:
            raise KubeconfigError(f"the kubeconfig's {field} names an entry twice or badly")
        out[name] = item[inner]
    return out


def cluster(config: Dict[str, Any]) -> Tuple[str, bytes]:
    """(server URL, certificate-authority-data decoded) of the cluster kubeadm uses."""
    clusters = _named(config, "clusters", "cluster")
    chosen = clusters.get("")
    if chosen is None:
        contexts = _named(config, "contexts", "context")
        current = config.get("current-context")
        context = contexts.get(current) if isinstance(current, str) else None
        chosen = clusters.get(str(context.get("cluster"))) if context else None
    if chosen is None:
        raise KubeconfigError("the kubeconfig has no unnamed cluster and no current context's")
    server, data = chosen.get("server"), chosen.get("certificate-authority-data")
    if not isinstance(server, str) or not server.startswith("https://"):
        raise KubeconfigError("the kubeconfig's cluster has no https:// server")
    if not isinstance(data, str) or not data:
        raise KubeconfigError("the kubeconfig's cluster has no certificate-authority-data")
    try:
        return server, base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise KubeconfigError("the certificate-authority-data is not base64") from None
