"""Which traffic comes from a pod on this node (detectLocalMode), in each rule language.

Upstream's LocalTrafficDetector: every proxier mode masquerades off-node traffic to cluster IPs and
short-circuits local pods to the cluster endpoints, so each needs the same test in its own form:
iptables arguments (``-s 10.244.0.0/16``, ``-i veth+``) or nftables expressions
(``ip saddr 10.244.0.0/16``, ``iifname "veth*"``).
"""

from __future__ import annotations

import ipaddress

from kproxy.proxy.config import ProxyConfig


class LocalDetector:
    """How 'traffic from a local pod' is recognised; empty forms when the mode has nothing to test."""

    def __init__(self, cfg: ProxyConfig, family: int, pod_cidr: str = "") -> None:
        self.if_local: list[str] = []
        self.if_not_local: list[str] = []
        self.if_local_nft: list[str] = []
        self.if_not_local_nft: list[str] = []
        mode = cfg.detect_local_mode
        if mode == "ClusterCIDR":
            cidrs = [c.strip() for c in cfg.cluster_cidr.split(",") if c.strip()
                     and ipaddress.ip_network(c.strip(), strict=False).version == family]
            if cidrs:
                self._by_source(cidrs[0], family)
        elif mode == "NodeCIDR" and pod_cidr:
            self._by_source(pod_cidr, family)
        elif mode == "BridgeInterface" and cfg.bridge_interface:
            self._by_interface(cfg.bridge_interface, cfg.bridge_interface)
        elif mode == "InterfaceNamePrefix" and cfg.interface_name_prefix:
            self._by_interface(cfg.interface_name_prefix + "+", cfg.interface_name_prefix + "*")

    def _by_source(self, cidr: str, family: int) -> None:
        self.if_local, self.if_not_local = ["-s", cidr], ["!", "-s", cidr]
        field = "ip saddr" if family == 4 else "ip6 saddr"
        self.if_local_nft = [*field.split(), cidr]
        self.if_not_local_nft = [*field.split(), "!=", cidr]

    def _by_interface(self, iptables_name: str, nft_name: str) -> None:
        self.if_local, self.if_not_local = ["-i", iptables_name], ["!", "-i", iptables_name]
        self.if_local_nft = ["iifname", f'"{nft_name}"']
        self.if_not_local_nft = ["iifname", "!=", f'"{nft_name}"']

    @property
    def implemented(self) -> bool:
        return bool(self.if_local)
