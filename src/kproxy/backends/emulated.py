"""The emulated node as a proxier backend: the same calls as the kernel backend, without root."""

from __future__ import annotations

import ipaddress
import os
import shlex
import socket
from typing import TYPE_CHECKING, Any

from kproxy.backends import BackendError

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.node import Node


def _addr(text: str) -> int:
    """An address as an integer (a full sync parses one per real server: faster than ``ipaddress``)."""
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text), "big")
    except OSError:
        raise BackendError(f"invalid address {text!r}") from None


class EmulatedBackend:
    # The proxier may hand over, with the restore input, the rules it already built for some of its
    # lines (``kproxy.proxy.prepared``); the emulated restore applies them instead of parsing those lines.
    takes_prepared_rules = True

    def __init__(self, node: Node, family: int = 4, verify_prepared: bool = False) -> None:
        self.node = node
        self.family = family
        # KPROXY_VERIFY_PREPARED=1 parses every prepared line too and fails a sync whose rules differ.
        self.verify_prepared = verify_prepared or os.environ.get("KPROXY_VERIFY_PREPARED") == "1"

    def _cmd(self, argv: list[str]) -> tuple[int, str, str]:
        return self.node.iptables_cmd(argv, self.family)

    def restore(self, text: str, noflush: bool = True, counters: bool = False,
                prepared: Any = None) -> None:
        from kproxy.iptables.restore import RestoreError

        extra: dict[str, Any] = {"prepared": prepared, "verify_prepared": self.verify_prepared} if prepared else {}
        try:
            self.node.iptables_restore(text, self.family, noflush=noflush, counters=counters, **extra)
        except RestoreError as exc:
            raise BackendError(str(exc)) from None

    def save(self, table: str) -> str:
        return self.node.iptables_save(self.family, tables=[table])

    def chain_names(self, table: str) -> list[str]:
        """The chains of ``table`` (what ``save`` would declare), without printing its rules."""
        t = self.node.iptables[self.family].tables.get(table)
        return list(t.chains) if t is not None else []

    def ensure_chain(self, table: str, chain: str) -> bool:
        """True when the chain already existed."""
        state = self.node.iptables[self.family]
        t = state.tables.get(table)
        if t is not None and chain in t.chains:
            return True
        rc, _, err = self._cmd(["-t", table, "-N", chain])
        if rc != 0:
            raise BackendError(err.strip())
        return False

    def ensure_rule(self, table: str, chain: str, args: list[str], prepend: bool = True) -> bool:
        """True when the rule already existed; else it is inserted first (or appended)."""
        rc, _, _ = self._cmd(["-t", table, "-C", chain, *args])
        if rc == 0:
            return True
        rc, _, err = self._cmd(["-t", table, "-I" if prepend else "-A", chain, *args])
        if rc != 0:
            raise BackendError(err.strip())
        return False

    def delete_rule(self, table: str, chain: str, args: list[str]) -> bool:
        rc, _, _ = self._cmd(["-t", table, "-D", chain, *args])
        return rc == 0

    def save_all(self) -> str:
        return self.node.iptables_save(self.family)

    def cleanup(self, prefix: str = "KUBE-") -> int:
        """Remove kproxy's chains and jump rules, nothing else; returns how many lines that took."""
        from kproxy.backends.kernel import owned_cleanup_input

        text = owned_cleanup_input(self.save_all(), prefix)
        if text:
            self.restore(text, noflush=True)
        return text.count("\n")

    def delete_chain(self, table: str, chain: str) -> bool:
        self._cmd(["-t", table, "-F", chain])
        rc, _, _ = self._cmd(["-t", table, "-X", chain])
        return rc == 0

    # ---- what the IPVS mode needs: sysctls, the dummy device, ipsets, IPVS --------------------
    def ipvs_unavailable(self) -> str:
        """Why IPVS cannot be used here ("" when it can): the emulated node always has it."""
        return ""

    def set_sysctl(self, name: str, value: int) -> None:
        """``net/ipv4/vs/conntrack`` (upstream's form) or dotted."""
        self.node.sysctls[name.replace("/", ".")] = str(value)

    def ensure_dummy_device(self, name: str) -> bool:
        """True when it existed. A dummy device as kube-proxy makes it: no link, left down; its
        addresses are local all the same (the kernel's local table holds them)."""
        from kproxy.node import Interface

        if name in self.node.interfaces:
            return True
        self.node.add_interface(Interface(name, [], up=False))
        return False

    def local_addresses(self, except_dev: str = "") -> set[str]:
        """The family's addresses on every device but ``except_dev``, less loopback and link-local
        (upstream's GetAllLocalAddressesExcept with isValidForSet)."""
        from kproxy.packet import format_addr

        out = set()
        for iface in self.node.interfaces.values():
            if iface.name == except_dev:
                continue
            for a in iface.addresses:
                ip = ipaddress.ip_address(a.addr) if a.family == 4 else ipaddress.IPv6Address(a.addr)
                if a.family == self.family and not ip.is_loopback and not (a.family == 6 and ip.is_link_local):
                    out.add(format_addr(a.addr, a.family))
        return out

    def device_addresses(self, dev: str) -> set[str]:
        from kproxy.packet import format_addr

        iface = self.node.interfaces.get(dev)
        return {format_addr(a.addr, a.family) for a in iface.addresses if a.family == self.family} if iface else set()

    def bind_addresses(self, dev: str, add: list[str], remove: list[str]) -> None:
        """Add (as /32 or /128) and remove addresses of ``dev``; the node re-indexes once."""
        from kproxy.node import Address

        iface = self.node.interfaces.get(dev)
        if iface is None:
            raise BackendError(f"Cannot find device \"{dev}\"")
        if remove:
            gone = {_addr(a) for a in remove}
            iface.addresses = [a for a in iface.addresses if a.family != self.family or a.addr not in gone]
        have = {a.addr for a in iface.addresses if a.family == self.family}
        for text in add:
            addr = _addr(text)
            if addr not in have:
                iface.addresses.append(Address(self.family, addr, 32 if self.family == 4 else 128))
                have.add(addr)
        if add or remove:
            self.node._reindex()       # once for the whole change: a sync binds thousands of addresses

    def ipset_restore(self, text: str) -> None:
        """``ipset restore -exist``: line by line, stopping at the first error as the tool does."""
        from kproxy.ipset.cli import COMMANDS, PROG, execute
        from kproxy.ipset.sets import IpsetError

        reg, now, flags = self.node.ipsets, self.node.now(), {"exist"}
        for n, line in enumerate(text.splitlines(), 1):
            words = shlex.split(line) if '"' in line else line.split()
            if not words:
                continue
            try:
                cmd = COMMANDS.get(words[0])
                if cmd is None or cmd in ("restore", "list", "save"):
                    raise IpsetError(f"Syntax error: unknown command {words[0]}")
                execute(reg, cmd, words[1:], flags, now, [])
            except (IpsetError, ValueError) as exc:
                raise BackendError(f"{PROG}: Error in line {n}: {exc}") from None

    def ipset_names(self) -> list[str]:
        return list(self.node.ipsets.sets)

    def ipset_destroy(self, name: str) -> bool:
        """``ipset destroy NAME``: False when it does not exist or is still in use."""
        from kproxy.ipset.sets import IpsetError

        try:
            self.node.ipsets.destroy(name)
        except IpsetError:
            return False
        return True

    def delete_device(self, name: str) -> bool:
        """``ip link del NAME``; False when there is no such device."""
        if self.node.interfaces.pop(name, None) is None:
            return False
        self.node._reindex()
        return True

    def ipset_entries(self, name: str) -> set[str]:
        """The members of set ``name`` as ``ipset list`` prints them (empty if there is no such set)."""
        s = self.node.ipsets.get(name)
        if s is None:
            return set()
        now = self.node.now()
        return {s.format(k) for k, _ in s.live(now)}

    def ipvs_set_timeouts(self, tcp: int, tcpfin: int, udp: int) -> None:
        """``ipvsadm --set``: 0 keeps the current value."""
        t = self.node.ipvs.timeouts
        for key, value in (("tcp", tcp), ("tcpfin", tcpfin), ("udp", udp)):
            if value > 0:
                t[key] = value

    def _vs_key(self, vs: Any) -> tuple[int, int, int, int]:
        from kproxy.ipvs.ipvs import PROTOS

        return (0, PROTOS[vs.protocol.lower()], _addr(vs.address), vs.port)

    def ipvs_services(self) -> list[Any]:
        """The node's virtual services of this family (firewall-mark services are not kube-proxy's)."""
        from kproxy.ipvs.ipvs import PROTO_NAMES
        from kproxy.packet import format_addr
        from kproxy.proxy.virtualserver import VirtualServer

        return [VirtualServer(format_addr(s.addr, s.family), PROTO_NAMES[s.proto], s.port, s.scheduler_name,
                              frozenset(s.flags | ({"persistent"} if s.persistent else set())), s.persistent or 0)
                for s in self.node.ipvs.services.values() if s.family == self.family and not s.fwmark]

    def ipvs_add_service(self, vs: Any) -> None:
        from kproxy.ipvs.ipvs import IpvsError, VirtualService

        key = self._vs_key(vs)
        try:
            svc = VirtualService(key[1], key[2], key[3], 0, vs.family, vs.scheduler, vs.timeout or None,
                                 flags=set(vs.flags - {"persistent"}))
            self.node.ipvs.add_service(svc)
        except IpvsError as exc:
            raise BackendError(str(exc)) from None

    def ipvs_update_service(self, vs: Any) -> None:
        from kproxy.ipvs.ipvs import IpvsError

        try:
            svc = self.node.ipvs.get_service(self._vs_key(vs))
            if svc.scheduler_name != vs.scheduler:
                svc.set_scheduler(vs.scheduler)
            svc.persistent = vs.timeout or None
            svc.flags = set(vs.flags - {"persistent"})
        except IpvsError as exc:
            raise BackendError(str(exc)) from None

    def ipvs_delete_service(self, vs: Any) -> None:
        from kproxy.ipvs.ipvs import IpvsError

        try:
            self.node.ipvs.del_service(self._vs_key(vs))
        except IpvsError as exc:
            raise BackendError(str(exc)) from None

    def ipvs_real_servers(self, vs: Any, fresh: bool = False) -> list[Any]:
        """The destinations of ``vs`` with their connection counts (``fresh``: expire old connections first)."""
        from kproxy.ipvs.ipvs import IpvsError
        from kproxy.packet import format_addr
        from kproxy.proxy.virtualserver import RealServer

        if fresh:
            self.node.ipvs.connections(self.node.now())
        try:
            svc = self.node.ipvs.get_service(self._vs_key(vs))
        except IpvsError as exc:
            raise BackendError(str(exc)) from None
        return [RealServer(format_addr(d.addr, d.family), d.port, d.weight, d.activeconns, d.inactconns)
                for d in svc.dests]

    def ipvs_add_real_servers(self, vs: Any, servers: list[Any]) -> None:
        """Masquerading destinations (upstream's AddRealServer, once per server)."""
        from kproxy.ipvs.ipvs import Dest, IpvsError

        try:
            svc = self.node.ipvs.get_service(self._vs_key(vs))
            self.node.ipvs.add_dests(svc, [Dest(_addr(rs.address), rs.port, svc.family, rs.weight, "masq")
                                           for rs in servers])
        except IpvsError as exc:
            raise BackendError(str(exc)) from None

    def ipvs_update_real_server(self, vs: Any, rs: Any) -> None:
        from kproxy.ipvs.ipvs import IpvsError

        try:
            svc = self.node.ipvs.get_service(self._vs_key(vs))
            d = svc.find(_addr(rs.address), rs.port)
            if d is None:
                raise IpvsError("No such destination")
            d.weight = rs.weight
            d.update_overload()
            assert svc.scheduler is not None
            svc.scheduler.update()
        except IpvsError as exc:
            raise BackendError(str(exc)) from None

    def ipvs_delete_real_server(self, vs: Any, rs: Any) -> None:
        from kproxy.ipvs.ipvs import IpvsError

        try:
            svc = self.node.ipvs.get_service(self._vs_key(vs))
            self.node.ipvs.del_dest(svc, _addr(rs.address), rs.port)
        except IpvsError as exc:
            raise BackendError(str(exc)) from None
