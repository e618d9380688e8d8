"""Later full syncs on a real kernel repair what drifted and send nothing else
(``kproxy.backends.nft_resync``): after each kind of tampering, a forced full sync leaves the kernel's
``nft list table`` equal to the emulated proxier's, by a transaction holding only the repair."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kproxy.backends import BackendError, nft_resync
from kproxy.lab.netns import Netns, kernel_lab_available
from kproxy.proxy.nftables import NftablesProxier

sys.path.insert(0, str(Path(__file__).parent))
from test_proxier_nftables import es, overall_objects, put  # noqa: E402
from test_proxier_nftables_kernel import twin_proxiers  # noqa: E402

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(kernel_lab_available() is not None, reason=str(kernel_lab_available()))]

T = "ip kube-proxy"
SVC1 = "service-ULMVA6XW-ns1/svc1/tcp/p80"
EP1 = "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"


@pytest.fixture
def ns() -> Iterator[Netns]:
    n = Netns.create("nftrs")
    try:
        yield n
    finally:
        n.delete()


class Synced:
    """The proxier on the kernel and its emulated twin, synced once, with a record of what the
    kernel backend sent with ``nft -f``."""

    def __init__(self, ns: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ns = ns
        self.kernel, self.emulated, _, self.clock = twin_proxiers(ns)
        self.objs, self.objs_twin = overall_objects(), overall_objects()
        self.sent: list[str] = []
        backend = self.kernel.backend
        real = backend._apply

        def spy(text: str) -> None:
            self.sent.append(text)
            real(text)

        monkeypatch.setattr(backend, "_apply", spy)
        self.sync()
        self.sent.clear()

    def sync(self, full: bool = False) -> None:
        for p, o in ((self.kernel, self.objs), (self.emulated, self.objs_twin)):
            r = p.sync(o, force_full=full)
            assert not r.error, r.error

    def nft(self, *commands: str, twin: list[str] | None = None) -> None:
        """The same commands on the kernel and on the emulated node (a chain made again is listed
        last, on both), or ``twin``'s on the emulated node."""
        for cmd in commands:
            assert self.ns.run(["nft", cmd]).returncode == 0, cmd
        for cmd in commands if twin is None else twin:
            self.emulated.backend.run(cmd + "\n")

    def listing(self) -> str:
        got = self.kernel.backend.list_table()
        assert got == self.emulated.backend.list_table()
        return got


def test_an_untouched_full_sync_sends_nothing(ns: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Synced(ns, monkeypatch)
    before = s.listing()
    s.sync(full=True)
    assert s.kernel.backend.last_repair == "" and s.sent == []
    assert s.listing() == before
    # a changed endpoint between two full syncs: the repair is that Service's part and no more
    put(s.objs, es("ns1", "svc1", "10.180.0.9"))
    put(s.objs_twin, es("ns1", "svc1", "10.180.0.9"))
    s.sync(full=True)
    assert len(s.sent) == 1
    lines = s.sent[0].splitlines()
    assert f"flush chain {T} {SVC1}" in lines and len(lines) < 12
    assert all("ns1/svc1" in line or line.startswith("delete chain") for line in lines), lines
    s.listing()


TAMPERING: dict[str, tuple[list[str], Callable[[list[str]], bool]]] = {
    "flushed chain": ([f"flush chain {T} services"], lambda lines: lines[0] == f"flush chain {T} services"),
    "deleted element": ([f"delete element {T} service-ips {{ 172.30.0.41 . tcp . 80 }}"],
                        lambda lines: lines == [f"add element {T} service-ips {{ 172.30.0.41 . tcp . 80 : goto {SVC1} }}"]),
    "extra element": ([f"add element {T} cluster-ips {{ 172.30.9.9 }}"],
                      lambda lines: lines == [f"delete element {T} cluster-ips {{ 172.30.9.9 }}"]),
    "changed verdict": ([f"delete element {T} service-ips {{ 172.30.0.41 . tcp . 80 }}",
                         f"add element {T} service-ips {{ 172.30.0.41 . tcp . 80 : goto reject-chain }}"],
                        lambda lines: len(lines) == 2 and lines[0].startswith("delete element")),
    "edited rule": ([f"add rule {T} masquerading accept", f"insert rule {T} mark-for-masquerade counter"],
                    lambda lines: sorted(ln.split()[4] for ln in lines if ln.startswith("flush")) ==
                    ["mark-for-masquerade", "masquerading"]),
    "changed anonymous vmap": ([f"flush chain {T} {SVC1}",
                                f"add rule {T} {SVC1} numgen random mod 1 vmap {{ 0 : goto reject-chain }}"],
                               lambda lines: lines[0] == f"flush chain {T} {SVC1}" and all(SVC1 in ln for ln in lines)),
    "deleted chain": ([f"flush chain {T} {SVC1}", f"delete chain {T} {EP1}"],
                      lambda lines: lines[0] == f"add chain {T} {EP1}" and len(lines) == 6),
    "deleted base chain": ([f"delete chain {T} nat-prerouting"],
                           lambda lines: lines == [f"add chain {T} nat-prerouting {{ type nat hook prerouting priority "
                                                   "dstnat; policy accept ; }", f"add rule {T} nat-prerouting jump services"]),
    "base chain's priority": ([f"delete chain {T} filter-input",
                               f"add chain {T} filter-input {{ type filter hook input priority 7 ; }}"],
                              lambda lines: lines[0] == f"delete chain {T} filter-input" and len(lines) == 4),
    "flushed table": ([f"flush table {T}"], lambda lines: len(lines) > 40 and lines[0].startswith("flush chain")),
    "added chain and set": ([f"add chain {T} service-XXXXXXXX-ns9/gone/tcp/p", f"add rule {T} service-XXXXXXXX-ns9/gone/tcp/p drop",
                             f"add set {T} mine {{ type ipv4_addr ; }}"],
                            lambda lines: lines == [f"flush chain {T} service-XXXXXXXX-ns9/gone/tcp/p"]),
}

# The emulated twin has no repair: its full rewrite gets EOPNOTSUPP for a changed base-chain priority,
# as ``nft -f`` of the rewrite does on the kernel; so it gets the chain made again as it should be.
TWIN_TAMPERING = {"base chain's priority": [f"delete chain {T} filter-input",
                                            f"add chain {T} filter-input {{ type filter hook input priority 0 ; }}"]}


@pytest.mark.parametrize("name", list(TAMPERING))
def test_a_full_sync_repairs_the_table_with_only_the_repair(ns: Netns, monkeypatch: pytest.MonkeyPatch,
                                                            name: str) -> None:
    """A stale-looking Service chain someone added is flushed as a full sync flushes stale chains
    (deleted after the grace period); a set that is not the proxier's is left, as a full sync leaves it."""
    commands, expected = TAMPERING[name]
    s = Synced(ns, monkeypatch)
    s.nft(*commands, twin=TWIN_TAMPERING.get(name))
    s.sync(full=True)
    assert len(s.sent) == 1, s.sent
    lines = s.sent[0].splitlines()
    assert expected(lines), lines
    s.listing()
    s.sync(full=True)                   # and then nothing is left to repair
    assert s.kernel.backend.last_repair == "" and len(s.sent) == 1
    put(s.objs, es("ns1", "svc1", "10.180.0.9"))         # partial syncs go on from the repaired table
    put(s.objs_twin, es("ns1", "svc1", "10.180.0.9"))
    s.clock.now += 5
    s.sync()
    s.sync()
    s.listing()


def test_a_deleted_table_is_written_in_full(ns: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Synced(ns, monkeypatch)
    s.nft(f"delete table {T}")
    s.sync(full=True)
    assert s.kernel.backend.last_repair is None
    assert s.sent and "add table ip kube-proxy" in s.sent[0]
    s.listing()


def test_affinity_elements_are_the_kernels(ns: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client's affinity entry (added by the packet path, expiring) survives a full sync untouched."""
    s = Synced(ns, monkeypatch)
    listing = s.listing()
    aff = next(w for w in listing.split() if w.startswith("affinity-"))
    s.nft(f"add element {T} {aff} {{ 10.9.9.9 timeout 1h }}")
    s.sync(full=True)
    assert s.sent == [] and s.kernel.backend.last_repair == ""
    assert "10.9.9.9 timeout 1h expires" in s.kernel.backend.list_table()
    s.nft(f"delete element {T} {aff} {{ 10.9.9.9 }}")
    s.listing()


def test_a_refused_repair_falls_back_to_the_full_transaction(ns: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Synced(ns, monkeypatch)
    s.nft(f"flush chain {T} services")
    monkeypatch.setattr(nft_resync, "plan", lambda *a: f"flush chain {T} services\nadd rule {T} services jump nowhere\n")
    s.sync(full=True)
    assert len(s.sent) == 2 and "nowhere" in s.sent[0] and len(s.sent[1].splitlines()) > 100
    s.listing()


def test_a_failing_full_sync_leaves_the_previous_rules(ns: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    """The repair refused and then the full transaction too: an error, the table as it was, and the
    next sync a full one again."""
    s = Synced(ns, monkeypatch)
    s.nft(f"flush chain {T} services")
    before = s.kernel.backend.list_table()
    monkeypatch.setattr(nft_resync, "plan", lambda *a: f"add rule {T} services jump nowhere\n")
    kernel: NftablesProxier = s.kernel
    real_run = kernel.backend._run

    def broken(argv: list[str], stdin: str | None = None) -> object:
        if argv == ["-f", "-"] and stdin and len(stdin.splitlines()) > 100:
            stdin += f"add rule {T} services jump nowhere-either\n"
        return real_run(argv, stdin)

    monkeypatch.setattr(kernel.backend, "_run", broken)
    r = kernel.sync(s.objs, force_full=True)
    assert r.error and "nowhere-either" in r.error
    assert kernel.need_full
    assert kernel.backend.list_table() == before
    monkeypatch.setattr(kernel.backend, "_run", real_run)
    monkeypatch.undo()
    r = kernel.sync(s.objs)
    assert r.full and not r.error
    assert not s.emulated.sync(s.objs_twin, force_full=True).error
    s.listing()


def test_a_transaction_the_twin_refuses_goes_to_the_kernel_for_its_message(ns: Netns,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    s = Synced(ns, monkeypatch)
    nft = s.kernel.backend
    before = nft.list_table()
    nft.names("chains")
    with pytest.raises(BackendError, match="No such file or directory"):
        nft.run(f"add table {T}\nadd rule {T} services jump nowhere\n")
    assert nft.last_repair is None and nft.list_table() == before
    nft.names("chains")                 # a partial sync's transaction is sent as it is
    nft.run(f"add element {T} cluster-ips {{ 172.30.9.9 }}\n")
    assert nft.last_repair is None and s.sent[-1] == f"add element {T} cluster-ips {{ 172.30.9.9 }}\n"


def test_ipv6_full_sync_sends_nothing(ns: Netns) -> None:
    from kproxy.backends.nft import EmulatedNft, KernelNft
    from kproxy.node import Node
    from kproxy.proxy.config import ProxyConfig
    from test_proxier_nftables import NODE, NODE_IPS, ipv6_objects

    config = ProxyConfig.from_dict({"mode": "nftables", "clusterCIDR": "fd00:10::/64", "hostnameOverride": "test-node",
                                    "nodePortAddresses": ["2001:db8::1/128"]})
    kw = {"family": 6, "service_cidrs": ["fd00:10:96::/112"], "node_ip": "2001:db8::1"}
    kernel = NftablesProxier(config, KernelNft(6, netns=ns.name), NODE_IPS, **kw)  # type: ignore[arg-type]
    emulated = NftablesProxier(config, EmulatedNft(Node.from_description(NODE), 6), NODE_IPS, **kw)  # type: ignore[arg-type]
    for p in (kernel, emulated):
        assert not p.sync(ipv6_objects()).error
    ns.run(["nft", "flush chain ip6 kube-proxy services"])
    for p in (kernel, emulated):
        assert not p.sync(ipv6_objects(), force_full=True).error
    assert kernel.backend.last_repair is not None and kernel.backend.last_repair.startswith("flush chain ip6 kube-proxy services")
    assert kernel.backend.list_table() == emulated.backend.list_table()
    assert not kernel.sync(ipv6_objects(), force_full=True).error
    assert kernel.backend.last_repair == ""


def test_stale_chains_go_with_the_repair(ns: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    """A partial sync leaves a stale endpoint chain; the next full sync past the grace period deletes
    it, in the repair's one transaction."""
    s = Synced(ns, monkeypatch)
    put(s.objs, es("ns1", "svc1", "10.180.0.9"))
    put(s.objs_twin, es("ns1", "svc1", "10.180.0.9"))
    s.sync()
    assert EP1 in s.kernel.stale_chains
    s.clock.now += 5
    s.sent.clear()
    s.sync(full=True)
    assert len(s.sent) == 1 and f"delete chain {T} {EP1}" in s.sent[0].splitlines()
    assert EP1 not in s.listing()


def test_iptables_nft_tables_are_not_the_repairs(ns: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    """iptables-nft's tables beside kube-proxy's (nf_tables too): neither read nor written by it."""
    s = Synced(ns, monkeypatch)
    assert ns.run(["iptables-nft", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "2222",
                   "-j", "RETURN"]).returncode == 0
    def saved() -> list[str]:
        return [ln for ln in ns.run(["iptables-nft-save", "-t", "nat"]).stdout.splitlines() if not ln.startswith("#")]

    before = saved()
    s.nft(f"flush chain {T} services")
    s.sync(full=True)
    assert s.sent and all(f" {T} " in line for line in s.sent[0].splitlines())
    assert saved() == before
    assert any("2222" in ln for ln in before)
    s.listing()


def test_a_restarted_proxier_finds_nothing_to_repair(ns: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new proxier's first sync over the table a previous one left: its transaction deletes and adds
    the base chains again (upstream's startup), so the repair does just that, and they list last as
    after the full transaction; nothing else is sent, and the next full sync sends nothing."""
    from kproxy.proxy.nftables import BASE_CHAINS

    s = Synced(ns, monkeypatch)
    before = s.listing()
    again, _, _, _ = twin_proxiers(ns)
    r = again.sync(overall_objects())
    assert r.full and not r.error, r.error
    base = {name for name, *_ in BASE_CHAINS}
    repair = again.backend.last_repair.splitlines()
    assert repair and all(line.split()[4] in base for line in repair), repair
    after = again.backend.list_table()
    assert sorted(after.splitlines()) == sorted(before.splitlines())
    chains = [ln.split()[1] for ln in after.splitlines() if ln.startswith("\tchain ")]
    assert set(chains[-len(base):]) == base
    assert again.sync(overall_objects(), force_full=True).error == ""
    assert again.backend.last_repair == ""
