"""Kube-proxy-shaped iptables rulesets of any size, for benchmarks.

The layout is upstream's iptables mode (KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-* with statistic
random and DNAT, KUBE-MARK-MASQ and KUBE-POSTROUTING), with simple deterministic chain names.
"""

from __future__ import annotations


def service_ip(i: int) -> str:
    return f"10.96.{i // 250}.{i % 250 + 1}"


def endpoint_ip(i: int, j: int) -> str:
    n = i * 16 + j
    return f"10.{100 + n // 65536}.{n // 256 % 256}.{n % 256}"


def nat_ruleset(services: int, endpoints: int = 3) -> str:
    """An iptables-restore input for the nat table with ``services`` ClusterIP Services."""
    chains = [":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
              ":POSTROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-MARK-MASQ - [0:0]",
              ":KUBE-POSTROUTING - [0:0]", ":KUBE-NODEPORTS - [0:0]"]
    rules = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
    ]
    for i in range(services):
        svc = f"KUBE-SVC-{i:016d}"
        chains.append(f":{svc} - [0:0]")
        name = f"ns{i % 10}/svc{i}:http"
        vip = service_ip(i)
        rules.append(f'-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment "{name} cluster IP" -m tcp --dport 80 -j {svc}')
        rules.append(f'-A {svc} ! -s 10.244.0.0/16 -d {vip}/32 -p tcp -m comment --comment "{name} cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ')
        for j in range(endpoints):
            sep = f"KUBE-SEP-{i:012d}{j:04d}"
            chains.append(f":{sep} - [0:0]")
            ep = endpoint_ip(i, j)
            left = endpoints - j
            stat = f" -m statistic --mode random --probability {1.0 / left:.11f}" if left > 1 else ""
            rules.append(f'-A {svc} -m comment --comment "{name} -> {ep}:8080"{stat} -j {sep}')
            rules.append(f'-A {sep} -s {ep}/32 -m comment --comment "{name}" -j KUBE-MARK-MASQ')
            rules.append(f'-A {sep} -p tcp -m comment --comment "{name}" -m tcp -j DNAT --to-destination {ep}:8080')
    rules.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    return "*nat\n" + "\n".join(chains) + "\n" + "\n".join(rules) + "\nCOMMIT\n"
