"""The IPv4/IPv6 packet path: hooks, routing decisions and the packet's fate.

Received packets: PREROUTING -> routing -> INPUT (local) or FORWARD -> POSTROUTING (forwarded).
Locally generated packets: routing -> OUTPUT -> re-route if NAT or the mark changed the
destination -> POSTROUTING -> out of a device, or over ``lo`` back into PREROUTING -> INPUT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from kproxy.netfilter.hooks import EGRESS, FORWARD, INGRESS, INPUT, OUTPUT, POSTROUTING, PREROUTING, HookState
from kproxy.netfilter.nat import loopback_source_out
from kproxy.netfilter.netns import NetNamespace
from kproxy.netfilter.tcp import TcpSeg
from kproxy.netfilter.trace import Trace
from kproxy.packet import ACK, ICMP, NF_ACCEPT, NF_STOLEN, RST, TCP, Packet, format_addr

DELIVERED, FORWARDED, DROPPED, REJECTED, STOLEN = "delivered", "forwarded", "dropped", "rejected", "stolen"


@dataclass(slots=True)
class Result:
    """Where a packet ended up, with the headers it had there and the steps that took it there."""

    fate: str
    packet: Packet
    hook: str = ""                 # the hook where it was dropped/rejected/stolen
    out_dev: str = ""              # forwarded/sent out of this device
    gateway: str = ""              # next hop when forwarded via a gateway
    reason: str = ""
    reject_with: str = ""
    trace: Trace | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ctstate(self) -> str:
        return self.packet.ctstate

    def summary(self) -> str:
        p = self.packet
        if self.fate == DELIVERED:
            return f"delivered locally to {p.dst_str}" + (f":{p.dport}" if p.dport else "")
        if self.fate == FORWARDED:
            via = f" via {self.gateway}" if self.gateway else ""
            return f"forwarded out of {self.out_dev}{via} as {p.describe()}"
        if self.fate == REJECTED:
            return f"rejected in {self.hook} with {self.reject_with}"
        if self.fate == STOLEN:
            return f"taken by {self.reason} in {self.hook}"
        return f"dropped in {self.hook}" + (f" ({self.reason})" if self.reason else "")


def _state(node: NetNamespace, hook: str, in_dev: str, out_dev: str, trace: Trace | None) -> HookState:
    return HookState(hook, in_dev, out_dev, node, trace, node.now())


def _run(node: NetNamespace, pkt: Packet, hook: str, in_dev: str, out_dev: str, trace: Trace | None) -> tuple[int, HookState]:
    """Run a hook's functions in priority order (nf_hook_slow): the first verdict other than ACCEPT ends it."""
    fns = node.hooks.fns.get((pkt.family, hook))
    if fns is None and trace is None:
        return NF_ACCEPT, _NO_STATE       # nothing registered at this hook: nothing to do
    clock = node.clock
    state = HookState(hook, in_dev, out_dev, node, trace, clock if clock is not None else node.now())
    if trace is not None and not trace.quiet:
        trace.add("hook", hook=hook, text=pkt.describe(), detail={"in": in_dev, "out": out_dev})
    for fn in fns or ():
        verdict = fn(pkt, state)
        if verdict != NF_ACCEPT:
            return verdict, state
    return NF_ACCEPT, state


_NO_STATE = HookState("", "", "", cast(NetNamespace, None))     # no hook ran: its node is never read


def _run_device(node: NetNamespace, pkt: Packet, hook: str, dev: str, trace: Trace | None) -> tuple[int, HookState]:
    """A device hook (INGRESS on ``dev`` receiving, EGRESS on ``dev`` sending): skipped, even in a trace,
    when no netdev or inet ingress chain is registered, as the kernel's static key skips it."""
    if (pkt.family, hook) not in node.hooks.fns:
        return NF_ACCEPT, _NO_STATE
    if hook == INGRESS:
        return _run(node, pkt, hook, dev, "", trace)
    return _run(node, pkt, hook, "", dev, trace)


def _stopped(verdict: int, state: HookState, pkt: Packet, trace: Trace | None) -> Result:
    if verdict == NF_STOLEN and "reinjected" in pkt.meta:
        return pkt.meta.pop("reinjected")          # IPVS sent it on: its own fate
    if verdict == NF_STOLEN:
        res = Result(STOLEN, pkt, state.hook, reason=str(pkt.meta.get("stolen_by", "a hook")), trace=trace)
    elif state.rejected_with:
        res = Result(REJECTED, pkt, state.hook, reject_with=state.rejected_with, trace=trace)
        if _answerable(pkt, state.rejected_with):
            # nf_send_unreach / nf_send_reset: the answer is a locally generated packet (OUTPUT, POSTROUTING).
            reply = reject_reply(pkt, state.rejected_with)
            if reply.proto == ICMP and not state.node.is_local(pkt.family, pkt.dst):
                reply.src = 0      # icmp_send: a forwarded packet's error comes from this node's own address
            if pkt.ct is not None:
                # nf_ct_attach: the answer is RELATED to the rejected packet's connection, other direction.
                reply.ct, reply.ctstate, reply.ctdir = pkt.ct, "RELATED", 1 - pkt.ctdir
                if reply.proto == TCP:
                    state.node.conntrack.set_closing(pkt.ct, state.now)    # nf_ct_set_closing
            res.extra["reply"] = output(state.node, reply, None)
            if trace is not None:
                trace.add("note", hook=state.hook, text=f"REJECT answered with {res.extra['reply'].packet.describe()}"
                          f" ({res.extra['reply'].fate})")
    else:
        res = Result(DROPPED, pkt, state.hook, trace=trace)
    _fate(trace, res)
    return res


def _answerable(pkt: Packet, kind: str) -> bool:
    """icmp_send never answers an ICMP error; nf_send_reset never answers a reset (an ICMP error
    about a reset is sent, though)."""
    if pkt.proto == ICMP and pkt.icmp_type not in (0, 8, 13, 14, 15, 16, 17, 18):
        return False
    return not (kind == "tcp-reset" and pkt.proto == TCP and pkt.tcp_flags & RST)


def _fate(trace: Trace | None, res: Result) -> Result:
    if trace is not None and not trace.quiet:
        trace.add("fate", hook=res.hook, verdict=res.fate, text=res.summary())
    return res


def _martian(node: NetNamespace, pkt: Packet, iif: str) -> str:
    """ip_route_input_slow's martian checks that matter for Services (route_localnet), for a packet
    with a loopback source or destination."""
    if pkt.family != 4 or iif == "lo":
        return ""
    localnet = node.sysctls.get("net.ipv4.conf.all.route_localnet", "0") == "1" or \
        node.sysctls.get(f"net.ipv4.conf.{iif}.route_localnet", "0") == "1"
    if (pkt.src >> 24) == 127 and not localnet:
        return "martian source"
    if (pkt.dst >> 24) == 127 and not localnet:
        return "martian destination"
    return ""


def receive(node: NetNamespace, pkt: Packet, iif: str, trace: Trace | None = None) -> Result:
    """A packet arriving on ``iif``: the whole inbound path, or its replay when the node's flow cache
    knows the packet's flow (never for a traced packet: a trace shows every step)."""
    flows = node.flows
    if trace is None and flows is not None and flows.enabled and iif in node.interfaces:
        res = flows.receive(pkt, iif)
        if res is not None:
            return res
    return receive_path(node, pkt, iif, trace)


def receive_path(node: NetNamespace, pkt: Packet, iif: str, trace: Trace | None = None) -> Result:
    """A packet arriving on ``iif``: the whole inbound path."""
    if iif not in node.interfaces:
        raise ValueError(f"no interface {iif!r} on node {node.name}")
    pkt.iif = iif
    if trace is not None and not trace.quiet:
        trace.add("packet", text=f"{pkt.describe()} in {iif}")
    return _ingress(node, pkt, iif, trace)


def _ingress(node: NetNamespace, pkt: Packet, iif: str, trace: Trace | None) -> Result:
    """From the device into the IP stack: the INGRESS hook, PREROUTING, then routing."""
    if (pkt.family, INGRESS) in node.hooks.fns:      # _run_device's test, inline: rarely any
        verdict, state = _run_device(node, pkt, INGRESS, iif, trace)
        if verdict != NF_ACCEPT:
            return _stopped(verdict, state, pkt, trace)
    verdict, state = _run(node, pkt, PREROUTING, iif, "", trace)
    if verdict != NF_ACCEPT:
        return _stopped(verdict, state, pkt, trace)
    return _route_input(node, pkt, iif, trace)


def _route_input(node: NetNamespace, pkt: Packet, iif: str, trace: Trace | None) -> Result:
    if (pkt.src >> 24) == 127 or (pkt.dst >> 24) == 127:      # only loopback addresses can be martians here
        bad = _martian(node, pkt, iif)
        if bad:
            return _fate(trace, Result(DROPPED, pkt, "routing", reason=bad, trace=trace))
    route = node.route_for_flow(pkt)
    if trace is not None and not trace.quiet:
        trace.add("route", text=_route_text(route, pkt))
    if route.type == "local":
        verdict, state = _run(node, pkt, INPUT, iif, "", trace)
        if verdict != NF_ACCEPT:
            return _stopped(verdict, state, pkt, trace)
        return _fate(trace, Result(DELIVERED, pkt, INPUT, trace=trace))
    if route.type != "unicast":
        return _fate(trace, Result(DROPPED, pkt, "routing", reason=f"route {route.type}", trace=trace))
    if not node.ip_forward:
        return _fate(trace, Result(DROPPED, pkt, "routing", reason="forwarding disabled (net.ipv4.ip_forward=0)", trace=trace))
    pkt.oif = route.dev
    pkt.ttl -= 1            # ip_forward decrements the TTL (hop limit) before the FORWARD hook
    verdict, state = _run(node, pkt, FORWARD, iif, route.dev, trace)
    if verdict != NF_ACCEPT:
        return _stopped(verdict, state, pkt, trace)
    return _postrouting(node, pkt, iif, route, trace)


def _postrouting(node: NetNamespace, pkt: Packet, iif: str, route: Any, trace: Trace | None) -> Result:
    verdict, state = _run(node, pkt, POSTROUTING, "", route.dev, trace)
    if verdict != NF_ACCEPT:
        return _stopped(verdict, state, pkt, trace)
    if (pkt.family, EGRESS) in node.hooks.fns:
        verdict, state = _run_device(node, pkt, EGRESS, route.dev, trace)
        if verdict != NF_ACCEPT:
            return _stopped(verdict, state, pkt, trace)
    gw = route.gateway_text
    return _fate(trace, Result(FORWARDED, pkt, POSTROUTING, route.dev, gw, "", "", trace))


def output(node: NetNamespace, pkt: Packet, trace: Trace | None = None) -> Result:
    """A packet generated by a local process: routing, OUTPUT, re-route, POSTROUTING, out or loopback."""
    pkt.local = True
    route = node.route(pkt.family, pkt.dst)
    if route.type not in ("unicast", "local"):
        return _fate(trace, Result(DROPPED, pkt, "routing", reason=f"no route to host ({route.type})", trace=trace))
    if pkt.src == 0 and route.prefsrc is not None:
        pkt.src = route.prefsrc
    if trace is not None:
        trace.add("packet", text=f"{pkt.describe()} from a local process")
        trace.add("route", text=_route_text(route, pkt))
    pkt.oif = route.dev
    dst_before, mark_before = pkt.dst, pkt.mark
    verdict, state = _run(node, pkt, OUTPUT, "", route.dev, trace)
    if verdict != NF_ACCEPT:
        return _stopped(verdict, state, pkt, trace)
    if pkt.dst != dst_before or pkt.mark != mark_before:
        # ip_route_me_harder: NAT or a mark changed where the packet goes.
        route = node.route(pkt.family, pkt.dst)
        if trace is not None:
            trace.add("route", text="re-route: " + _route_text(route, pkt))
        if route.type not in ("unicast", "local"):
            return _fate(trace, Result(DROPPED, pkt, "routing", reason=f"no route after re-route ({route.type})", trace=trace))
        if loopback_source_out(node, pkt, route):
            # __mkroute_output refuses it (EINVAL), so ip_route_me_harder drops the packet.
            return _fate(trace, Result(DROPPED, pkt, "routing", reason=f"loopback source out of {route.dev} "
                                       "(route_localnet=0)", trace=trace))
        pkt.oif = route.dev
    if route.type == "local":
        verdict, state = _run(node, pkt, POSTROUTING, "", "lo", trace)
        if verdict != NF_ACCEPT:
            return _stopped(verdict, state, pkt, trace)
        verdict, state = _run_device(node, pkt, EGRESS, "lo", trace)
        if verdict != NF_ACCEPT:
            return _stopped(verdict, state, pkt, trace)
        # Over loopback: back in through lo's INGRESS, PREROUTING (conntrack is already attached) and INPUT.
        pkt.iif = "lo"
        return _ingress(node, pkt, "lo", trace)
    return _postrouting(node, pkt, "", route, trace)


def _route_text(route: Any, pkt: Packet) -> str:
    if route.type == "local":
        return f"{pkt.dst_str} is local"
    if route.type != "unicast":
        return f"{pkt.dst_str}: {route.type}"
    via = f" via {format_addr(route.gateway, pkt.family)}" if route.gateway is not None else ""
    return f"{pkt.dst_str}{via} dev {route.dev}"


def reject_reply(pkt: Packet, kind: str) -> Packet:
    """The packet REJECT sends back: a TCP RST for tcp-reset, else an ICMP error quoting ``pkt``."""
    if kind == "tcp-reset" and pkt.proto == TCP:
        # nf_reject_ip_tcphdr_put: acknowledge what the segment used, or take its acknowledgement as ours.
        acked = bool(pkt.tcp_flags & ACK)
        flags = RST if acked else RST | ACK
        seg = None
        if pkt.seg is not None:
            seg = TcpSeg(pkt.seg.ack) if acked else TcpSeg(0, pkt.seg.end(pkt.tcp_flags))
        return Packet(src=pkt.dst, dst=pkt.src, proto=TCP, sport=pkt.dport, dport=pkt.sport, family=pkt.family,
                      tcp_flags=flags, length=40, seg=seg)
    codes = {"icmp-net-unreachable": 0, "icmp-host-unreachable": 1, "icmp-proto-unreachable": 2,
             "icmp-port-unreachable": 3, "icmp-net-prohibited": 9, "icmp-host-prohibited": 10,
             "icmp-admin-prohibited": 13}
    return Packet(src=pkt.dst, dst=pkt.src, proto=ICMP, family=pkt.family, icmp_type=3,
                  icmp_code=codes.get(kind, 3), inner=pkt.copy(), length=56)


def reinject_local_out(node: NetNamespace, pkt: Packet, trace: Trace | None, via: int | None = None) -> Result:
    """IPVS's transmit: a rewritten packet re-routed (towards ``via`` when given) and sent through
    LOCAL_OUT and POSTROUTING."""
    route = node.route(pkt.family, pkt.dst if via is None else via)
    if route.type != "unicast":
        return _fate(trace, Result(DROPPED, pkt, "routing", reason=f"IPVS: no route to {pkt.dst_str}", trace=trace))
    if trace is not None and not trace.quiet:
        trace.add("route", text="IPVS re-route: " + _route_text(route, pkt))
    pkt.oif = route.dev
    verdict, state = _run(node, pkt, OUTPUT, "", route.dev, trace)
    if verdict != NF_ACCEPT:
        return _stopped(verdict, state, pkt, trace)
    return _postrouting(node, pkt, "", route, trace)
