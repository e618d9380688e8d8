"""What every proxier mode is to the sync loop, and which modes exist.

A mode (iptables, nftables, ipvs) is its rule generation and its apply step; the change tracking
(``kproxy.proxy.changes``), the local-traffic detector (``kproxy.proxy.localdetect``), health and
metrics are shared. The sync loop and the CLI see a proxier only through ``Proxier``. The mode
named in the configuration or on the command line picks the proxier; a mode that is not
available is an error at start, never a silent fallback to another mode.
"""

from __future__ import annotations

import gc
import ipaddress
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from kproxy.k8s.manifests import Objects
from kproxy.proxy.config import ProxyConfig


@dataclass
class SyncResult:
    """One sync: what was applied, how long it took, and whether it failed (``error``)."""

    full: bool
    source: str | Callable[[], str]    # what was applied (restore input, an nft transaction, ...), or how to print it
    lines: int
    duration: float
    rules: dict[str, int] = field(default_factory=dict)    # rules written per table
    error: str = ""
    changed_services: set[str] = field(default_factory=set)

    @property
    def text(self) -> str:
        """What was applied, as text: printed the first time it is asked for (a structured
        transaction applied to the emulated node needs no text)."""
        if not isinstance(self.source, str):
            self.source = self.source()
        return self.source

    @property
    def nat_rules(self) -> int:
        return self.rules.get("nat", 0)

    @property
    def filter_rules(self) -> int:
        return self.rules.get("filter", 0)


class Proxier(Protocol):
    """A proxier mode as the sync loop drives it."""

    cfg: ProxyConfig
    need_full: bool          # the last sync failed (or none ran yet): the next one rewrites everything

    def sync(self, objs: Objects, force_full: bool = False) -> SyncResult:
        """Program the dataplane for ``objs``: what changed (or everything, when ``force_full``)."""
        ...


def primary_node_ip(node_ips: list[str], family: int) -> str:
    """Upstream's nodeIP when none is given: the node's first address of the family that is not
    loopback (or "" when it has none)."""
    return next((ip for ip in node_ips if ipaddress.ip_address(ip).version == family
                 and not ipaddress.ip_address(ip).is_loopback), "")


_FROZEN = [0]      # objects frozen right after the last collection


@contextmanager
def gc_paused(full: bool = False) -> Iterator[None]:
    """The cyclic GC paused during a sync: a proxier's caches are large and long-lived, and a
    collection triggered mid-sync would rescan all of them.

    Afterwards what the sync left is frozen (moved out of the collector's generations), or the first
    collection after a big sync traverses all of it: at 10,000 Services that put 400 ms into the
    next EndpointSlice change. A full sync collects first once the frozen objects have doubled since
    the last collection, so cyclic garbage stays within the size of what is alive."""
    enabled = gc.isenabled()
    gc.disable()
    collected = full and gc.get_freeze_count() > 2 * _FROZEN[0] + 100_000
    if collected:
        gc.unfreeze()
        gc.collect()
    try:
        yield
    finally:
        gc.freeze()
        if collected:
            _FROZEN[0] = gc.get_freeze_count()
        if enabled:
            gc.enable()

class MetaProxier:
    """Upstream's metaproxier: a dual-stack node runs one proxier per IP family behind one."""

    def __init__(self, *proxiers: Proxier) -> None:
        self.proxiers = proxiers
        self.cfg = proxiers[0].cfg

    @property
    def need_full(self) -> bool:
        return any(p.need_full for p in self.proxiers)

    def sync(self, objs: Objects, force_full: bool = False) -> SyncResult:
        """Each family in turn over the same changes (a family's sync takes the dirty marks)."""
        dirty = None if objs.dirty is None else set(objs.dirty)
        results = []
        for p in self.proxiers:
            objs.dirty = None if dirty is None else set(dirty)
            results.append(p.sync(objs, force_full))
        if objs.dirty is not None:
            objs.dirty.clear()
        rules: dict[str, int] = {}
        for r in results:
            for k, v in r.rules.items():
                rules[k] = rules.get(k, 0) + v
        return SyncResult(any(r.full for r in results), lambda: "".join(r.text for r in results),
                          sum(r.lines for r in results), sum(r.duration for r in results), rules,
                          "; ".join(r.error for r in results if r.error),
                          set().union(*(r.changed_services for r in results)))


class ModeUnavailable(ValueError):
    """The proxy mode asked for cannot run here (unknown, not built yet, or the backend lacks it)."""


ProxierFactory = Callable[..., Proxier]


def _iptables() -> ProxierFactory:
    from kproxy.proxy.iptables import IptablesProxier

    return IptablesProxier


def _ipvs() -> ProxierFactory:
    from kproxy.proxy.ipvs import IpvsProxier

    return IpvsProxier


def _nftables() -> ProxierFactory:
    from kproxy.proxy.nftables import NftablesProxier

    return NftablesProxier


# Mode name -> how to get its proxier class (imported on demand, as a mode's module may be large).
MODES: dict[str, Callable[[], ProxierFactory]] = {"iptables": _iptables, "ipvs": _ipvs, "nftables": _nftables}
KNOWN_MODES = ("iptables", "ipvs", "nftables")


def proxier_class(mode: str) -> ProxierFactory:
    """The proxier for ``mode`` (empty: upstream's default on Linux, iptables); ModeUnavailable if none."""
    mode = mode or "iptables"
    factory = MODES.get(mode)
    if factory is None:
        if mode in KNOWN_MODES:
            raise ModeUnavailable(f"proxy mode {mode!r} is not available in this kproxy (available: "
                                  f"{', '.join(sorted(MODES))})")
        raise ModeUnavailable(f"unknown proxy mode {mode!r} (iptables, ipvs or nftables)")
    return factory()
