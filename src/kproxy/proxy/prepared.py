"""The proxier's commonest rules built as iptables ``Rule`` objects, for the emulated node.

Nine in ten lines of a kube-proxy restore input are one of three shapes, one per endpoint: the
KUBE-SVC jump to an endpoint's chain (with its ``statistic`` share), and the endpoint chain's
KUBE-MARK-MASQ and DNAT rules; most of the rest are one per service port (KUBE-SERVICES' jump to
the service and the service's masquerade rule). The proxier knows the few values each was written from (a
``Spec``), so for the emulated node it hands over those rules already built, keyed by their line
in the restore input, and the restore applies them in place of parsing their text again. Every
other line is parsed as usual.

The rules are built with the same extension constructors the parser calls, in the parser's
match order; ``tests/test_proxier_prepared.py`` checks for every proxier scenario that a node
restored this way is identical, rule by rule and field by field, to one that parsed the text, and
``restore(..., verify_prepared=True)`` checks any given input line by line.
"""

from __future__ import annotations

import socket
from typing import Any

from kproxy.iptables.ext.nat import DnatTarget
from kproxy.iptables.extension import MATCHES, Opt
from kproxy.iptables.model import Net, Rule
from kproxy.iptables.parser import extension_for, parse_net
from kproxy.netfilter.nat import NatRange
from kproxy.packet import PROTO_NUMBERS

# Each spec starts with its kind and the chain the rule is in:
MASQ_FROM = "masq-from"   # (MASQ_FROM, chain, comment, ip): -m comment --comment C -s IP -j KUBE-MARK-MASQ
#                           (a comment of None: no comment match, as upstream writes them in a large cluster)
DNAT_TO = "dnat-to"       # (DNAT_TO, chain, comment, proto, ip, port):
#                           -m comment --comment C -m P -p P -j DNAT --to-destination IP:PORT
JUMP_TO = "jump-to"       # (JUMP_TO, chain, comment, probability or None, target):
#                           -m comment --comment "C" [-m statistic --mode random --probability P] -j TARGET
PORTAL = "portal"         # (PORTAL, chain, comment, proto, cluster ip, port, source or None, target):
#                           -m comment --comment "C" -m P -p P -d IP --dport PORT [! -s SOURCE] -j TARGET
#                           (KUBE-SERVICES' jump to a service, and the service's masquerade rule)
Spec = tuple[Any, ...]

KUBE_MARK_MASQ = "KUBE-MARK-MASQ"


class RuleBuilder:
    """Builds rules from specs; stateless extension objects are shared, as the parser shares them."""

    def __init__(self, family: int) -> None:
        self.family = family
        self._comments: dict[str, Any] = {}
        self._stats: dict[str, Any] = {}
        self._protos: dict[str, Any] = {}
        self._comment_cls = MATCHES["comment"]
        self._stat_cls = MATCHES["statistic"]
        self._af = socket.AF_INET if family == 4 else socket.AF_INET6
        self._host = 32 if family == 4 else 128
        self._last_ip = ""
        self._last_addr = 0

    def build(self, spec: Spec) -> Rule:
        kind = spec[0]
        if kind == MASQ_FROM:
            _, _, comment, ip = spec
            r = Rule(Net(self.family, self._address(ip), self._host), jump=KUBE_MARK_MASQ)
            r.matches = [self._comment(comment, r)] if comment is not None else []
            return r
        if kind == DNAT_TO:
            _, _, comment, proto, ip, port = spec
            r = Rule(proto=PROTO_NUMBERS[proto])
            r.matches = [self._comment(comment, r), self._proto(proto, r)] if comment is not None else \
                [self._proto(proto, r)]
            addr = self._address(ip)
            r.target = DnatTarget(NatRange(addr, addr, port, port), self.family)
            return r
        if kind == JUMP_TO:
            _, _, comment, probability, chain = spec
            r = Rule(jump=chain)
            c = [self._new_comment(comment, r)] if comment is not None else []
            r.matches = [*c, self._statistic(probability, r)] if probability is not None else c
            return r
        if kind == PORTAL:
            _, _, comment, proto, ip, port, source, target = spec
            r = Rule(proto=PROTO_NUMBERS[proto], jump=target, src_inv=source is not None)
            r.matches = [self._new_comment(comment, r),
                         extension_for(MATCHES[proto], [Opt("dport", [port], False)], self.family, r)]
            r.dst = parse_net(ip, self.family)
            if source is not None:
                r.src = parse_net(source, self.family)
            return r
        raise ValueError(f"unknown rule spec {kind!r}")

    def _address(self, ip: str) -> int:
        """An endpoint's address as a number (the one before is remembered: MASQ and DNAT rules share it)."""
        if ip != self._last_ip:
            self._last_ip = ip
            self._last_addr = int.from_bytes(socket.inet_pton(self._af, ip), "big")
        return self._last_addr

    def _comment(self, text: str, rule: Rule) -> Any:
        """A comment that repeats (one per endpoint chain's rules): one shared object."""
        got = self._comments.get(text)
        if got is None:
            got = self._comments[text] = self._new_comment(text, rule)
        return got

    def _new_comment(self, text: str, rule: Rule) -> Any:
        return self._comment_cls.from_options([Opt("comment", [text], False)], self.family, rule)

    def _statistic(self, probability: str, rule: Rule) -> Any:
        got = self._stats.get(probability)
        if got is None:
            got = self._stats[probability] = self._stat_cls.from_options(
                [Opt("mode", ["random"], False), Opt("probability", [probability], False)], self.family, rule)
        return got

    def _proto(self, proto: str, rule: Rule) -> Any:
        got = self._protos.get(proto)
        if got is None:
            got = self._protos[proto] = extension_for(MATCHES[proto], [], self.family, rule)
        return got
