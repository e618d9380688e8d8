"""The flowtable fast path (nf_flow_table): offloaded connections skip the IP hooks.

A rule's ``flow add @ft`` marks a forwarded connection offloaded (IPS_OFFLOAD) once conntrack has
confirmed it and, for TCP, it is ESTABLISHED and assured and the segment no FIN or RST
(nft_flow_offload_eval; never a connection with a helper or sequence adjustment). From then on a packet of that
connection arriving on one of the flowtable's devices is taken at the INGRESS hook (the flowtable's
priority): its NAT rewritten from the connection's tuples, its TTL decremented, and sent out of the
route's device, without PREROUTING, FORWARD or POSTROUTING (nf_flow_offload_ip_hook). A TCP FIN or RST,
or a TTL that would expire, goes back to the normal path; FIN/RST also end the offload (the connection
gets its state's timeout back, flow_offload_teardown). While offloaded the connection's timeout is
kept at a day (nf_ct_offload_timeout), and conntrack -L shows [OFFLOAD] in place of [ASSURED].

This kernel is built without flowtables (CONFIG_NF_FLOW_TABLE unset), so none of this could be
compared with it: it follows the kernel's source.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from kproxy.netfilter.conntrack import IPS_ASSURED, IPS_CONFIRMED, IPS_SEQ_ADJUST, UDP_REPLIED, Tuple
from kproxy.netfilter.tcp import TCP_TIMEOUTS
from kproxy.packet import FIN, NF_ACCEPT, NF_STOLEN, RST, TCP, UDP, Packet

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.netfilter.conntrack import Conn
    from kproxy.netfilter.hooks import HookState
    from kproxy.netfilter.netns import NetNamespace

IPS_OFFLOAD = 1 << 14
NF_CT_DAY = 86400            # nf_ct_offload_timeout keeps an offloaded connection alive this long
FLOW_TIMEOUT = 30            # NF_FLOW_TIMEOUT: a flow with no packet for this long is torn down


def flow_add(pkt: Packet, state: HookState) -> bool:
    """``flow add @ft``: offload the packet's connection when the kernel would; whether it did."""
    ct = pkt.ct
    if ct is None or ct.status & (IPS_OFFLOAD | IPS_SEQ_ADJUST) or ct.helper or not ct.status & IPS_CONFIRMED:
        return False
    # nf_conntrack_tcp_established: ESTABLISHED and assured
    if ct.proto not in (TCP, UDP) or ct.proto == TCP and (ct.tcp_state != "ESTABLISHED" or not ct.status & IPS_ASSURED
                                                          or pkt.tcp_flags & (FIN | RST)):
        return False
    ct.status |= IPS_OFFLOAD
    _keep_alive(ct, state.now)
    flows(state.node)[ct.id] = state.now + FLOW_TIMEOUT
    if state.trace is not None:
        state.trace.add("note", hook=state.hook, text=f"flow offloaded: {ct.orig.text()}")
    return True


def flows(node: NetNamespace) -> dict[int, float]:
    """Offloaded connections by id, with when their flow times out."""
    found: dict[int, float] = node.subsystems.setdefault("flowtable_flows", {})
    return found


def _keep_alive(ct: Conn, now: float) -> None:
    if ct.expires - now < NF_CT_DAY / 2:
        ct.expires = now + NF_CT_DAY


def teardown(node: NetNamespace, ct: Conn, now: float) -> None:
    """flow_offload_teardown: the connection leaves the fast path; flow_offload_fixup_ct gives it its
    state's timeout less the flowtable's own (nf_flowtable_tcp/udp_timeout, 30 s)."""
    ct.status &= ~IPS_OFFLOAD
    flows(node).pop(ct.id, None)
    base = TCP_TIMEOUTS.get(ct.tcp_state, 0) if ct.proto == TCP else UDP_REPLIED
    timeout = max(0, base - FLOW_TIMEOUT)
    if ct.expires - now > timeout:
        ct.expires = now + timeout


def ingress_hook(devices: Collection[str], counter: bool, name: str) -> Callable[[Packet, HookState], int]:
    """The flowtable's function at the INGRESS hook of its devices (nf_flow_offload_ip_hook)."""
    devs = frozenset(devices)

    def hook(pkt: Packet, state: HookState) -> int:
        if state.in_dev not in devs:
            return NF_ACCEPT
        return offloaded(pkt, state, counter, name)

    return hook


def offloaded(pkt: Packet, state: HookState, counter: bool, name: str) -> int:
    node = state.node
    found = node.conntrack.lookup(Tuple.of(pkt), state.now)
    if found is None or not found[0].status & IPS_OFFLOAD:
        return NF_ACCEPT
    ct, d = found
    timeouts = flows(node)
    # The flows' own timeouts live with the process, not the node file: a connection found offloaded
    # after a reload starts a fresh flow timeout.
    if timeouts.setdefault(ct.id, state.now + FLOW_TIMEOUT) < state.now:
        teardown(node, ct, state.now)         # the flow timed out: the normal path takes it again
        return NF_ACCEPT
    if pkt.ttl <= 1:
        return NF_ACCEPT
    if pkt.proto == TCP and pkt.tcp_flags & (FIN | RST):
        teardown(node, ct, state.now)
        return NF_ACCEPT
    other = ct.reply if d == 0 else ct.orig
    pkt.src, pkt.dst = other.dst, other.src
    if pkt.proto in (TCP, UDP):
        pkt.sport, pkt.dport = other.dport, other.sport
    pkt.ttl -= 1
    pkt.ct, pkt.ctdir, pkt.ctstate = ct, d, "ESTABLISHED"
    timeouts[ct.id] = state.now + FLOW_TIMEOUT
    _keep_alive(ct, state.now)
    if counter:
        ct.acct[d] += 1
        ct.acct[2 + d] += pkt.length
    return _send(node, pkt, state, name)


def _send(node: NetNamespace, pkt: Packet, state: HookState, name: str) -> int:
    from kproxy.netfilter.path import DROPPED, FORWARDED, Result

    route = node.route(pkt.family, pkt.dst)
    if route.type != "unicast":
        res = Result(DROPPED, pkt, state.hook, reason=f"flowtable {name}: no route", trace=state.trace)
    else:
        pkt.oif = route.dev
        res = Result(FORWARDED, pkt, state.hook, route.dev, route.gateway_text, trace=state.trace)
    if state.trace is not None:
        state.trace.add("note", hook=state.hook, text=f"flowtable {name}: offloaded, skips the IP hooks")
        state.trace.add("fate", hook=state.hook, verdict=res.fate, text=res.summary())
    pkt.meta["reinjected"] = res
    return NF_STOLEN
