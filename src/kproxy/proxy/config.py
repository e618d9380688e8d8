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
    healthz_bind_address: str = "127.0.0.1:10256"
    conntrack_tcp_be_liberal: bool = False

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
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a KubeProxyConfiguration must be a mapping")
        if data.get("kind", "KubeProxyConfiguration") != "KubeProxyConfiguration":
            raise ConfigError(f"{source}: kind: expected KubeProxyConfiguration, got {data.get('kind')!r}")
        if data.get("apiVersion", API_VERSION) != API_VERSION:
            raise ConfigError(f"{source}: apiVersion: expected {API_VERSION}, got {data.get('apiVersion')!r}")
        c = cls()

        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"{source}: {key}: {why}")

        mode = str(data.get("mode") or "")
        if mode not in MODES:
            raise bad("mode", f"unknown proxy mode {mode!r} (iptables, ipvs or nftables)")
        c.mode = mode or "iptables"
        cidrs = str(data.get("clusterCIDR") or "")
        for part in filter(None, cidrs.split(",")):
            try:
                ipaddress.ip_network(part.strip(), strict=False)
            except ValueError:
                raise bad("clusterCIDR", f"invalid CIDR {part!r}") from None
        c.cluster_cidr = cidrs
        detect = str(data.get("detectLocalMode") or "")
        if detect not in DETECT_MODES:
            raise bad("detectLocalMode", f"unknown mode {detect!r}")
        c.detect_local_mode = detect or "ClusterCIDR"
        detect_local = data.get("detectLocal") or {}
        c.bridge_interface = str(detect_local.get("bridgeInterface") or "")
        c.interface_name_prefix = str(detect_local.get("interfaceNamePrefix") or "")
        npa = data.get("nodePortAddresses") or []
        for a in npa:
            if a != "primary":
                try:
                    ipaddress.ip_network(str(a), strict=False)
                except ValueError:
                    raise bad("nodePortAddresses", f"invalid CIDR {a!r}") from None
        c.node_port_addresses = [str(a) for a in npa]
        ipt = data.get("iptables") or {}
        c.masquerade_all = bool(ipt.get("masqueradeAll", False))
        bit = ipt.get("masqueradeBit", 14)
        if not isinstance(bit, int) or not 0 <= bit <= 31:
            raise bad("iptables.masqueradeBit", "must be between 0 and 31")
        c.masquerade_bit = bit
        c.localhost_node_ports = bool(ipt.get("localhostNodePorts", True))
        for key, attr in (("syncPeriod", "sync_period"), ("minSyncPeriod", "min_sync_period")):
            raw = ipt.get(key, data.get(key))
            if raw is not None:
                try:
                    setattr(c, attr, parse_duration(str(raw)))
                except ValueError as exc:
                    raise bad(f"iptables.{key}", str(exc)) from None
        if c.sync_period <= 0:
            raise bad("syncPeriod", "must be greater than 0")
        if c.min_sync_period > c.sync_period:
            raise bad("minSyncPeriod", "must be no greater than syncPeriod")
        c.hostname_override = str(data.get("hostnameOverride") or "")
        c.metrics_bind_address = str(data.get("metricsBindAddress") or c.metrics_bind_address)
        c.healthz_bind_address = str(data.get("healthzBindAddress") or c.healthz_bind_address)
        ct = data.get("conntrack") or {}
        c.conntrack_tcp_be_liberal = bool(ct.get("tcpBeLiberal", False))
        if c.detect_local_mode == "ClusterCIDR" and not c.cluster_cidr and detect:
            raise bad("clusterCIDR", "required when detectLocalMode is ClusterCIDR")
        return c
