"""KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1): the fields the proxiers use, upstream's defaults."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any

from kproxy.yamlfile import load_yaml

API_VERSION = "kubeproxy.config.k8s.io/v1alpha1"
MODES = ("", "iptables", "ipvs", "nftables")
DETECT_MODES = ("", "ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix")
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns))+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


class ConfigError(ValueError):
    """A bad configuration: ``file: field: reason``."""


def parse_duration(text: str) -> float:
    """A Go duration (``30s``, ``1m30s``, ``500ms``) in seconds."""
    if text in ("0", ""):
        return 0.0
    if not _DURATION.match(text):
        raise ValueError(f"invalid duration {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))


@dataclass
class ProxyConfig:
    mode: str = "iptables"
    cluster_cidr: str = ""
    detect_local_mode: str = "ClusterCIDR"
    bridge_interface: str = ""
    interface_name_prefix: str = ""
    node_port_addresses: list[str] = field(default_factory=list)
    masquerade_all: bool = False
    masquerade_bit: int = 14
    sync_period: float = 30.0
    min_sync_period: float = 1.0
    localhost_node_ports: bool = True
    hostname_override: str = ""
    metrics_bind_address: str = "127.0.0.1:10249"
    healthz_bind_address: str = "0.0.0.0:10256"
    conntrack_tcp_be_liberal: bool = False
    kubeconfig: str = ""                 # clientConnection.kubeconfig
    config_sync_period: float = 900.0    # the informers' resync period (upstream: 15m)

    @property
    def masquerade_mark(self) -> str:
        return f"0x{1 << self.masquerade_bit:x}"

    @property
    def hostname(self) -> str:
        return self.hostname_override or os.uname().nodename.lower()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ProxyConfig:
        return cls.from_dict(load_yaml(path, ConfigError) or {}, str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<config>") -> ProxyConfig:
        """Decode strictly (an unknown field is an error, as upstream's strict decoder reports it),
        then validate with upstream's field errors."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a KubeProxyConfiguration must be a mapping")
        if data.get("kind", "KubeProxyConfiguration") != "KubeProxyConfiguration":
            raise ConfigError(f"{source}: kind: expected KubeProxyConfiguration, got {data.get('kind')!r}")
        if data.get("apiVersion", API_VERSION) != API_VERSION:
            raise ConfigError(f"{source}: apiVersion: expected {API_VERSION}, got {data.get('apiVersion')!r}")
        problems = decode_errors(data, SCHEMA)
        if problems:
            raise ConfigError(f"{source}: strict decoding error: {', '.join(problems)}")
        c = cls()
        errs: list[str] = []

        def invalid(path: str, value: Any, why: str) -> None:
            errs.append(f"KubeProxyConfiguration.{path}: Invalid value: {_go_value(value)}: {why}")

        mode = str(data.get("mode") or "")
        if mode not in MODES:
            invalid("ProxyMode", mode, "must be iptables, ipvs, nftables or blank (blank means the "
                    "best-available proxy [currently iptables])")
        c.mode = mode or "iptables"
        cidrs = str(data.get("clusterCIDR") or "")
        parts = [part.strip() for part in cidrs.split(",") if part.strip()]
        if len(parts) > 2:
            invalid("ClusterCIDR", cidrs, "only one CIDR allowed or a valid DualStack CIDR (e.g. 10.100.0.0/16, "
                    "fde4:8dba:82e1::/48)")
        for part in parts:
            if not _is_cidr(part):
                invalid("ClusterCIDR", cidrs, "must be a valid CIDR block (e.g. 10.100.0.0/16 or "
                        "fde4:8dba:82e1::/48)")
                break
        c.cluster_cidr = cidrs
        detect = str(data.get("detectLocalMode") or "")
        if detect not in DETECT_MODES:
            invalid("DetectLocalMode", detect, "must be ClusterCIDR, NodeCIDR, BridgeInterface, "
                    "InterfaceNamePrefix or blank")
        c.detect_local_mode = detect or "ClusterCIDR"
        detect_local = data.get("detectLocal") or {}
        c.bridge_interface = str(detect_local.get("bridgeInterface") or "")
        c.interface_name_prefix = str(detect_local.get("interfaceNamePrefix") or "")
        if c.detect_local_mode == "BridgeInterface" and not c.bridge_interface:
            invalid("DetectLocalConfiguration.BridgeInterface", "", "must not be empty")
        if c.detect_local_mode == "InterfaceNamePrefix" and not c.interface_name_prefix:
            invalid("DetectLocalConfiguration.InterfaceNamePrefix", "", "must not be empty")
        npa = [str(a) for a in data.get("nodePortAddresses") or []]
        for i, a in enumerate(npa):
            if a != "primary" and not _is_cidr(a):
                invalid(f"NodePortAddresses[{i}]", a, "must be a valid CIDR")
        if "primary" in npa and len(npa) > 1:
            invalid("NodePortAddresses", npa, "can't use 'primary' with other values")
        c.node_port_addresses = npa
        # The mode's own section gives the masquerade settings (ipvs uses iptables') and sync periods.
        section_name = {"nftables": "nftables", "ipvs": "ipvs"}.get(c.mode, "iptables")
        section = data.get(section_name) or {}
        masq = data.get("nftables" if c.mode == "nftables" else "iptables") or {}
        masq_path = "KubeProxyNFTablesConfiguration" if c.mode == "nftables" else "KubeProxyIPTablesConfiguration"
        c.masquerade_all = bool(masq.get("masqueradeAll", False))
        bit = masq.get("masqueradeBit", 14)
        if not 0 <= bit <= 31:
            invalid(f"{masq_path}.MasqueradeBit", bit, "must be within the range [0, 31]")
        c.masquerade_bit = bit
        c.localhost_node_ports = bool((data.get("iptables") or {}).get("localhostNodePorts", True))
        path = {"nftables": "KubeProxyNFTablesConfiguration", "ipvs": "KubeProxyIPVSConfiguration"}.get(
            c.mode, "KubeProxyIPTablesConfiguration")
        for key, attr in (("syncPeriod", "sync_period"), ("minSyncPeriod", "min_sync_period")):
            raw = section.get(key, data.get(key))
            if raw is not None:
                try:
                    setattr(c, attr, parse_duration(str(raw)))
                except ValueError as exc:
                    raise ConfigError(f"{source}: {section_name}.{key}: {exc}") from None
        if c.sync_period <= 0:
            invalid(f"{path}.SyncPeriod", _duration_text(c.sync_period), "must be greater than 0")
        if c.min_sync_period < 0:
            invalid(f"{path}.MinSyncPeriod", _duration_text(c.min_sync_period), "must be greater than or equal to 0")
        if c.min_sync_period > c.sync_period:
            invalid(f"{path}.SyncPeriod", _duration_text(c.min_sync_period),
                    f"must be greater than or equal to KubeProxyConfiguration.{path}.MinSyncPeriod")
        c.hostname_override = str(data.get("hostnameOverride") or "")
        c.kubeconfig = str((data.get("clientConnection") or {}).get("kubeconfig") or "")
        if data.get("configSyncPeriod") is not None:
            try:
                c.config_sync_period = parse_duration(str(data["configSyncPeriod"]))
            except ValueError as exc:
                raise ConfigError(f"{source}: configSyncPeriod: {exc}") from None
        for key, attr in (("metricsBindAddress", "metrics_bind_address"), ("healthzBindAddress", "healthz_bind_address")):
            value = str(data.get(key) or getattr(c, attr))
            why = _host_port_problem(value)
            if why:
                invalid(key[0].upper() + key[1:], value, why)
            setattr(c, attr, value)
        ct = data.get("conntrack") or {}
        c.conntrack_tcp_be_liberal = bool(ct.get("tcpBeLiberal", False))
        for key in ("maxPerCore", "min"):
            if ct.get(key) is not None and ct[key] < 0:
                invalid(f"KubeProxyConntrackConfiguration.{key[0].upper() + key[1:]}", ct[key],
                        "must be greater than or equal to 0")
        oom = data.get("oomScoreAdj")
        if oom is not None and not -1000 <= oom <= 1000:
            invalid("OOMScoreAdj", oom, "must be within the range [-1000, 1000]")
        if errs:
            raise ConfigError(f"{source}: " + (errs[0] if len(errs) == 1 else "[" + ", ".join(errs) + "]"))
        return c


def _is_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return "/" in text


def _go_value(value: Any) -> str:
    """A value as apimachinery's field.Invalid prints it: strings quoted, numbers bare."""
    if isinstance(value, _Duration):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[]string{" + ", ".join(_go_value(v) for v in value) + "}"
    return str(value)


class _Duration(str):
    """A duration as Go's time.Duration prints it (a Stringer: field errors show it unquoted)."""


def _duration_text(seconds: float) -> _Duration:
    """Go's Duration.String: ``1h2m3s``, ``1m30s``, ``2s``, ``500ms``, ``0s``."""
    if seconds == 0:
        return _Duration("0s")
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    if seconds < 1:
        for unit, scale in (("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
            if seconds >= scale:
                return _Duration(f"{sign}{seconds / scale:g}{unit}")
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    text = (f"{int(h)}h" if h else "") + (f"{int(m)}m" if h or m else "") + f"{sec:g}s"
    return _Duration(sign + text)


def _host_port_problem(text: str) -> str:
    """Why ``text`` is not an IP:port as validateHostPort wants it ("" when it is)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        return "must be IP:port"
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return "must be a valid IP"
    if not port.isdigit() or not 0 < int(port) < 65536:
        return "must be a valid port"
    return ""


# The fields of KubeProxyConfiguration v1alpha1 and their JSON kinds: a nested dict is an object, a
# tuple (kind,) a list of that kind. What strict decoding accepts; anything else is an unknown field.
_DURATION_FIELD, _STR, _BOOL, _INT = "duration", "string", "bool", "int32"
_SYNC = {"syncPeriod": _DURATION_FIELD, "minSyncPeriod": _DURATION_FIELD}
SCHEMA: dict[str, Any] = {
    "apiVersion": _STR, "kind": _STR, "featureGates": {"*": _BOOL},
    "clientConnection": {"kubeconfig": _STR, "acceptContentTypes": _STR, "contentType": _STR, "qps": "float",
                         "burst": _INT},
    "logging": {"*": "any"}, "hostnameOverride": _STR, "bindAddress": _STR, "healthzBindAddress": _STR,
    "metricsBindAddress": _STR, "bindAddressHardFail": _BOOL, "enableProfiling": _BOOL,
    "showHiddenMetricsForVersion": _STR, "serviceProxyName": _STR, "mode": _STR,
    "iptables": {"masqueradeBit": _INT, "masqueradeAll": _BOOL, "localhostNodePorts": _BOOL, **_SYNC},
    "ipvs": {**_SYNC, "scheduler": _STR, "excludeCIDRs": (_STR,), "strictARP": _BOOL, "tcpTimeout": _DURATION_FIELD,
             "tcpFinTimeout": _DURATION_FIELD, "udpTimeout": _DURATION_FIELD},
    "nftables": {"masqueradeBit": _INT, "masqueradeAll": _BOOL, "tableName": _STR, **_SYNC},
    "winkernel": {"networkName": _STR, "sourceVip": _STR, "enableDSR": _BOOL, "rootHnsEndpointName": _STR,
                  "forwardHealthCheckVip": _BOOL},
    "detectLocalMode": _STR, "detectLocal": {"bridgeInterface": _STR, "interfaceNamePrefix": _STR},
    "clusterCIDR": _STR, "nodePortAddresses": (_STR,), "oomScoreAdj": _INT,
    "conntrack": {"maxPerCore": _INT, "min": _INT, "tcpEstablishedTimeout": _DURATION_FIELD,
                  "tcpCloseWaitTimeout": _DURATION_FIELD, "tcpBeLiberal": _BOOL, "udpTimeout": _DURATION_FIELD,
                  "udpStreamTimeout": _DURATION_FIELD},
    "configSyncPeriod": _DURATION_FIELD, "portRange": _STR, **_SYNC,
}
_JSON_KIND = {dict: "object", list: "array", str: "string", bool: "bool", int: "number", float: "number"}


def decode_errors(data: Any, schema: Any, path: str = "") -> list[str]:
    """What a strict JSON decode of ``data`` into ``schema`` reports: unknown fields and wrong kinds."""
    if isinstance(schema, dict):
        if not isinstance(data, dict):
            return [_type_error(data, "object", path)]
        out: list[str] = []
        for key, value in data.items():
            where = f"{path}.{key}" if path else str(key)
            sub = schema.get(key, schema.get("*"))
            if sub is None:
                out.append(f'unknown field "{where}"')
            elif value is not None:
                out.extend(decode_errors(value, sub, where))
        return out
    if isinstance(schema, tuple):
        if not isinstance(data, list):
            return [_type_error(data, "array", path)]
        return [e for i, item in enumerate(data) for e in decode_errors(item, schema[0], f"{path}[{i}]")]
    ok = {"any": True, _STR: isinstance(data, str), _DURATION_FIELD: isinstance(data, str), _BOOL: isinstance(data, bool),
          _INT: isinstance(data, int) and not isinstance(data, bool) and -2**31 <= data < 2**31,
          "float": isinstance(data, (int, float)) and not isinstance(data, bool)}[schema]
    return [] if ok else [_type_error(data, schema, path)]


def _type_error(data: Any, want: str, path: str) -> str:
    got = _JSON_KIND.get(type(data), type(data).__name__)
    return f"json: cannot unmarshal {got} into Go struct field KubeProxyConfiguration.{path} of type {want}"
