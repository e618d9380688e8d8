"""Kube-proxy-shaped nftables rulesets of any size, for benchmarks.

The script is what upstream kube-proxy's nftables mode (pkg/proxy/nftables/proxier.go) hands to
``nft -f`` on a full sync: the ``ip kube-proxy`` table, its base-chain skeleton (filter chains at
priority -110 that send new connections to the check chains, nat chains that jump to ``services`` and
``masquerading``), the verdict maps keyed by ``ip daddr . meta l4proto . th dport``, one
``service-*`` chain per Service (masquerade for traffic from outside the cluster CIDR, then
``numgen random mod N vmap`` over its endpoints) and one ``endpoint-*`` chain per endpoint
(``ip saddr`` hairpin masquerade, ``meta l4proto tcp dnat to``). Chain names follow upstream's
``service-HASH-ns/name/tcp/port`` and ``endpoint-HASH-ns/name/tcp/port__IP/PORT`` with a
deterministic stand-in for the hash.
"""

from __future__ import annotations

from rulesets import endpoint_ip

CLUSTER_CIDR = "10.0.0.0/8"     # pods: clients in 10.244.0.0/16, endpoints from 10.100.0.0 on
SERVICE_CIDR = "172.30.0.0/16"
NODE_IP = "192.168.1.10"

SKELETON = f"""\
add table ip kube-proxy {{ comment "rules for kube-proxy" ; }}
add chain ip kube-proxy cluster-ips-check
add chain ip kube-proxy filter-prerouting {{ type filter hook prerouting priority -110 ; }}
add chain ip kube-proxy filter-forward {{ type filter hook forward priority -110 ; }}
add chain ip kube-proxy filter-input {{ type filter hook input priority -110 ; }}
add chain ip kube-proxy filter-output {{ type filter hook output priority -110 ; }}
add chain ip kube-proxy filter-output-post-dnat {{ type filter hook output priority -90 ; }}
add chain ip kube-proxy firewall-check
add chain ip kube-proxy mark-for-masquerade
add chain ip kube-proxy masquerading
add chain ip kube-proxy nat-output {{ type nat hook output priority -100 ; }}
add chain ip kube-proxy nat-postrouting {{ type nat hook postrouting priority 100 ; }}
add chain ip kube-proxy nat-prerouting {{ type nat hook prerouting priority -100 ; }}
add chain ip kube-proxy nodeport-endpoints-check
add chain ip kube-proxy reject-chain {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}
add chain ip kube-proxy service-endpoints-check
add chain ip kube-proxy services
add set ip kube-proxy cluster-ips {{ type ipv4_addr ; comment "Active ClusterIPs" ; }}
add set ip kube-proxy nodeport-ips {{ type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }}
add map ip kube-proxy firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
comment "destinations that are subject to LoadBalancerSourceRanges" ; }}
add map ip kube-proxy no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; \
comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }}
add map ip kube-proxy no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
comment "vmap to drop or reject packets to services with no endpoints" ; }}
add map ip kube-proxy service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}
add map ip kube-proxy service-nodeports {{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }}
add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule ip kube-proxy cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment "Drop traffic to unallocated ClusterIPs"
add rule ip kube-proxy filter-prerouting ct state new jump firewall-check
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check
add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump firewall-check
add rule ip kube-proxy filter-output-post-dnat ct state new jump cluster-ips-check
add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add rule ip kube-proxy nat-output jump services
add rule ip kube-proxy nat-postrouting jump masquerading
add rule ip kube-proxy nat-prerouting jump services
add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule ip kube-proxy reject-chain reject
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add element ip kube-proxy nodeport-ips {{ {NODE_IP} }}
"""


def service_ip(i: int) -> str:
    return f"172.30.{i // 250}.{i % 250 + 1}"


def service_chain(i: int) -> str:
    return f"service-{i:08X}-ns{i % 10}/svc{i}/tcp/http"


def endpoint_chain(i: int, j: int) -> str:
    return f"endpoint-{i:05X}{j:03X}-ns{i % 10}/svc{i}/tcp/http__{endpoint_ip(i, j)}/8080"


def kube_proxy_script(services: int, endpoints: int = 10) -> str:
    """An ``nft -f`` input for ``services`` ClusterIP Services of ``endpoints`` endpoints each, in the
    order upstream writes a full sync (chains declared before the rules that jump to them)."""
    out = [SKELETON]
    for i in range(services):
        svc, vip = service_chain(i), service_ip(i)
        eps = [endpoint_chain(i, j) for j in range(endpoints)]
        out.append(f"add chain ip kube-proxy {svc}\n")
        out.append(f"flush chain ip kube-proxy {svc}\n")
        for j, ep in enumerate(eps):
            out.append(f"add chain ip kube-proxy {ep}\nflush chain ip kube-proxy {ep}\n"
                       f"add rule ip kube-proxy {ep} ip saddr {endpoint_ip(i, j)} jump mark-for-masquerade\n"
                       f"add rule ip kube-proxy {ep} meta l4proto tcp dnat to {endpoint_ip(i, j)}:8080\n")
        out.append(f"add rule ip kube-proxy {svc} ip daddr {vip} tcp dport 80 ip saddr != {CLUSTER_CIDR} "
                   "jump mark-for-masquerade\n")
        vmap = " , ".join(f"{j} : goto {ep}" for j, ep in enumerate(eps))
        out.append(f"add rule ip kube-proxy {svc} numgen random mod {endpoints} vmap {{ {vmap} }}\n")
        out.append(f"add element ip kube-proxy cluster-ips {{ {vip} }}\n")
        out.append(f"add element ip kube-proxy service-ips {{ {vip} . tcp . 80 : goto {svc} }}\n")
    return "".join(out)
