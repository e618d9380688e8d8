"""kube-proxy's Prometheus metrics under upstream's names, on a registry of the proxier's own."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

BUCKETS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192,
           16.384, 32.768, 65.536, 131.072, 262.144)
# Upstream's NetworkProgrammingLatency buckets: 0.25 s and 0.5 s, then every second to 59 s, every
# 5 s to 115 s, every 30 s to 300 s.
NETWORK_PROGRAMMING_BUCKETS = (0.25, 0.5, *range(1, 60), *range(60, 120, 5), *range(120, 301, 30))


# The iptables mode's nfacct objects and the metrics upstream exports their packet counts as.
CT_STATE_INVALID_DROPPED = "ct_state_invalid_dropped_pkts"
LOCALHOST_NODEPORT_ACCEPTED = "localhost_nps_accepted_pkts"
NFACCT_METRICS = {
    CT_STATE_INVALID_DROPPED: ("kubeproxy_iptables_ct_state_invalid_dropped_packets_total",
                               "packets dropped by iptables to work around conntrack problems"),
    LOCALHOST_NODEPORT_ACCEPTED: ("kubeproxy_iptables_localhost_nodeports_accepted_packets_total",
                                  "Number of packets accepted on nodeports of loopback interface"),
}


class NfacctCollector(Collector):
    """Reads the nfacct objects' packet counts at each scrape (a counter missing on the node is left out)."""

    def __init__(self, packets: Callable[[str], int | None]) -> None:
        self.packets = packets

    def collect(self) -> Iterator[CounterMetricFamily]:
        for counter, (name, doc) in NFACCT_METRICS.items():
            value = self.packets(counter)
            if value is not None:
                yield CounterMetricFamily(name, doc, value=value)


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sync_duration = Histogram("kubeproxy_sync_proxy_rules_duration_seconds",
                                       "SyncProxyRules latency in seconds", buckets=BUCKETS, registry=r)
        self.full_duration = Histogram("kubeproxy_sync_full_proxy_rules_duration_seconds",
                                       "SyncProxyRules latency in seconds for full resyncs", buckets=BUCKETS,
                                       registry=r)
        self.partial_duration = Histogram("kubeproxy_sync_partial_proxy_rules_duration_seconds",
                                          "SyncProxyRules latency in seconds for partial resyncs", buckets=BUCKETS,
                                          registry=r)
        self.last_timestamp = Gauge("kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                                    "The last time proxy rules were successfully synced", registry=r)
        self.last_queued = Gauge("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                                 "The last time a sync of proxy rules was queued", registry=r)
        # Per table and IP family, as upstream labels them: a dual-stack proxier's two halves share these.
        self.rules_total = Gauge("kubeproxy_sync_proxy_rules_iptables_total",
                                 "Total number of iptables rules owned by kube-proxy", ["table", "ip_family"],
                                 registry=r)
        self.rules_last_sync = Gauge("kubeproxy_sync_proxy_rules_iptables_last",
                                     "Number of iptables rules written by kube-proxy in last sync",
                                     ["table", "ip_family"], registry=r)
        self.restore_failures = Counter("kubeproxy_sync_proxy_rules_iptables_restore_failures",
                                        "Cumulative proxy iptables restore failures", ["ip_family"], registry=r)
        self.partial_failures = Counter("kubeproxy_sync_proxy_rules_iptables_partial_restore_failures",
                                        "Cumulative proxy iptables partial restore failures", ["ip_family"],
                                        registry=r)
        self.no_local = Gauge("kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                              "Number of services with a Local traffic policy and no endpoints",
                              ["traffic_policy", "ip_family"], registry=r)
        self.service_changes = Counter("kubeproxy_sync_proxy_rules_service_changes",
                                       "Cumulative proxy rules Service changes", registry=r)
        self.endpoint_changes = Counter("kubeproxy_sync_proxy_rules_endpoint_changes",
                                        "Cumulative proxy rules Endpoint changes", registry=r)

        # The nftables mode: upstream's two failure counters, and (kproxy's own) what the table holds.
        self.nft_sync_failures = Counter("kubeproxy_sync_proxy_rules_nftables_sync_failures",
                                         "Cumulative proxy nftables sync failures", registry=r)
        self.nft_cleanup_failures = Counter("kubeproxy_sync_proxy_rules_nftables_cleanup_failures",
                                            "Cumulative proxy nftables cleanup failures", registry=r)
        self.nft_objects = Gauge("kubeproxy_sync_proxy_rules_nftables_objects",
                                 "Rules, chains and map elements in kube-proxy's nftables table (kproxy)",
                                 ["kind"], registry=r)
        self.nft_stale_chains = Gauge("kubeproxy_sync_proxy_rules_nftables_stale_chains",
                                      "Chains flushed and waiting to be deleted (kproxy)", registry=r)
        self.network_programming = Histogram(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds", buckets=NETWORK_PROGRAMMING_BUCKETS, registry=r)
        self.healthz_total = Counter("kubeproxy_proxy_healthz_total", "Cumulative proxy healthz HTTP status",
                                     ["code"], registry=r)
        self.livez_total = Counter("kubeproxy_proxy_livez_total", "Cumulative proxy livez HTTP status",
                                   ["code"], registry=r)

    def count_nfacct(self, packets: Callable[[str], int | None]) -> None:
        """Export the nfacct objects' counts (the iptables mode, on a node that has nfacct)."""
        self.registry.register(NfacctCollector(packets))

    def network_programmed(self, seconds: float) -> None:
        """An endpoint change (its trigger time) is now programmed, ``seconds`` after it happened."""
        self.network_programming.observe(max(0.0, seconds))

    def health_checked(self, which: str, code: int) -> None:
        (self.healthz_total if which == "healthz" else self.livez_total).labels(code=str(code)).inc()

    def queued(self) -> None:
        self.last_queued.set(time.time())

    def synced(self, result: Any, no_local: dict[str, int], family: int = 4) -> None:
        self.sync_duration.observe(result.duration)
        (self.full_duration if result.full else self.partial_duration).observe(result.duration)
        self.last_timestamp.set(time.time())
        # Per family, as upstream labels it: a dual-stack proxier's two halves share these metrics.
        ip_family = f"IPv{family}"
        self.rules_total.labels(table="filter", ip_family=ip_family).set(result.filter_rules)
        self.rules_total.labels(table="nat", ip_family=ip_family).set(result.nat_rules)
        self.no_local.labels(traffic_policy="internal", ip_family=ip_family).set(no_local["internal"])
        self.no_local.labels(traffic_policy="external", ip_family=ip_family).set(no_local["external"])
        if result.changed_services:
            self.service_changes.inc(len(result.changed_services))

    def iptables_written(self, counts: dict[str, int], family: int = 4) -> None:
        """The rules a sync's restore input held, per table (upstream's sync_proxy_rules_iptables_last)."""
        for table, n in counts.items():
            self.rules_last_sync.labels(table=table, ip_family=f"IPv{family}").set(n)

    def restore_failed(self, partial: bool, family: int = 4) -> None:
        self.restore_failures.labels(ip_family=f"IPv{family}").inc()
        if partial:
            self.partial_failures.labels(ip_family=f"IPv{family}").inc()

    def nftables_synced(self, counts: dict[str, int], stale_chains: int) -> None:
        for kind, n in counts.items():
            self.nft_objects.labels(kind=kind).set(n)
        self.nft_stale_chains.set(stale_chains)

    def nftables_sync_failed(self) -> None:
        self.nft_sync_failures.inc()

    def nftables_cleanup_failed(self) -> None:
        self.nft_cleanup_failures.inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
