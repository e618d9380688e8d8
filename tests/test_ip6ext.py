"""IPv6 extension headers in the packet model (kproxy.ip6ext) without a kernel: the spec words and
their errors, the wire form, the matches and expressions that read the chain, nf_defrag_ipv6, and the
``trace --exthdr`` / packet-file syntax. The kernel comparison is tests/test_ip6ext_kernel.py; the
expectations here are what it showed."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from kproxy import ip6ext
from kproxy.cli.main import cli
from kproxy.cli.packets import SpecError, parse_packet_file, parse_spec_args
from kproxy.nftables.cli import run_nft
from kproxy.nftables.evaluate import attach
from kproxy.nftables.model import Ruleset
from kproxy.node import Node
from kproxy.packet import Packet

HOST = {"name": "h", "interfaces": [{"name": "eth0", "addresses": ["fd00::10/64"]}], "routes": []}


def udp(*words: str, length: int | None = None) -> Packet:
    chain = ip6ext.parse_chain(words)
    return Packet.make("fd00::5", "fd00::10", "udp", 4000, 53, exthdrs=chain,
                       length=length if length is not None else 48 + sum(h.length() for h in chain))


# ---- the spec words and the wire form -----------------------------------------------------------

def test_option_headers_are_padded_to_eight_octets_as_a_sender_pads_them() -> None:
    ra = ip6ext.parse("hbh,opt=5:2")
    assert ra.opts == ((5, 2), (1, 0)) and ra.length() == 8
    assert ra.wire(17).hex() == "1100050200000100"          # router alert, then PadN of 0 data octets
    assert ip6ext.parse("dst,opt=30:3").opts == ((30, 3), (0, 0))         # 7 octets used: one Pad1
    assert ip6ext.parse("hbh").opts == ((1, 4),) and ip6ext.parse("dst,opt=1:12").length() == 16
    assert ip6ext.parse("dst,opt=1:12").wire(6)[1] == 1      # the length field counts 8-octet units past 8


def test_routing_and_fragment_headers_on_the_wire() -> None:
    rt = ip6ext.parse("rt,type=0,addr=fd00::9,addr=fd00::2")
    assert (rt.segs_left, rt.length()) == (2, 40)
    assert rt.wire(17)[:8].hex() == "1104000200000000"
    srh = ip6ext.parse("rt,type=4,segs=1,addr=fd00::2,addr=fd00::1")
    assert srh.wire(58)[:8].hex() == "3a04040101000000"        # last-entry 1 by default
    frag = ip6ext.parse("frag,offset=3,mf=1,id=7,res=1,res2=2")
    assert frag.wire(17).hex() == "1101001d00000007" and frag.frag_off == 3 << 3 | 2 << 1 | 1
    chain = ip6ext.parse_chain(["hbh", "frag,id=9"])
    assert ip6ext.wire(chain, 17)[0] == 44 and ip6ext.wire(chain, 17)[8] == 17
    for h in (rt, srh, frag, ip6ext.parse("hbh,opt=5:2,opt=0"), ip6ext.parse("dst,opt=30:1,opt=31:12")):
        assert ip6ext.parse(h.text()) == h


@pytest.mark.parametrize(("word", "error"), [
    ("ah", 'ah: unknown extension header "ah" (hbh, dst, rt or frag)'),
    ("hbh,type=1", 'hbh,type=1: "type=1": hbh takes opt='),
    ("rt,segs", 'rt,segs: "segs": rt takes type=, segs=, res=, addr='),
    ("frag,id=1,id=2", "frag,id=1,id=2: id= given twice"),
    ("frag,offset=8192", "frag,offset=8192: offset: 8192 out of range (0-8191)"),
    ("frag,mf=yes", 'frag,mf=yes: mf: "yes" is not a number'),
    ("hbh,opt=0:2", "hbh,opt=0:2: opt=0 is Pad1, which has no length"),
    ("rt,addr=10.0.0.1", 'rt,addr=10.0.0.1: addr: invalid IPv6 address "10.0.0.1"'),
    ("dst,opt=300", "dst,opt=300: opt: 300 out of range (0-255)"),
])
def test_bad_words_say_which_word_and_what_is_wrong(word: str, error: str) -> None:
    with pytest.raises(ip6ext.ExtHdrError) as exc:
        ip6ext.parse(word)
    assert str(exc.value) == error


def test_a_non_first_fragment_ends_the_chain() -> None:
    with pytest.raises(ValueError, match="dst: no header can follow a non-first fragment"):
        Packet.make("fd00::1", "fd00::2", "udp", 1, 2, exthdrs=["frag,offset=2", "dst"])
    assert len(Packet.make("fd00::1", "fd00::2", "udp", 1, 2, exthdrs=["frag,mf=1", "dst"]).exthdrs) == 2
    with pytest.raises(ValueError, match="need an IPv6 packet"):
        Packet.make("10.0.0.1", "10.0.0.2", "udp", 1, 2, exthdrs=["hbh"])


def test_the_packet_keeps_the_upper_layer_as_its_protocol() -> None:
    p = udp("hbh,opt=5:2", "rt,type=0,addr=fd00::10")
    assert (p.proto, p.nexthdr) == (17, 0) and udp().nexthdr == 17
    assert p.describe().endswith("[hbh,opt=5:2 rt,type=0,addr=fd00::10]")
    assert p.copy().exthdrs == p.exthdrs


# ---- ip6tables ----------------------------------------------------------------------------------

def ipt_hits(rules: list[str], packets: list[Packet]) -> list[int]:
    node = Node.from_description(HOST)
    node.iptables_restore("*filter\n" + "".join(f"-A INPUT {r}\n" for r in rules) + "COMMIT\n", family=6)
    for p in packets:
        node.receive(p, "eth0")
    return [int(line[1:line.index(":")]) for line in node.iptables_save(6, counters=True).splitlines()
            if line.startswith("[") and "-A INPUT" in line]


def test_ip6tables_header_matches_read_the_chain_as_the_kernel_does() -> None:
    packets = [udp(), udp("hbh,opt=5:2"), udp("dst", "hbh"), udp("rt,type=0,addr=fd00::9,addr=fd00::10"),
               udp("frag,id=7"), udp("frag,mf=1,id=8", "dst,opt=30:1")]
    rules = ["-m hbh", "-m hbh --hbh-len 8", "-m hbh --hbh-len 1", "-m hbh --hbh-opts 5:2,1:0", "-m hbh --hbh-opts 5:3",
             "-m dst", "-m dst --dst-opts 30:1,1:1", "-m rt --rt-type 0 --rt-len 40",
             "-m rt --rt-type 0 --rt-0-addrs fd00::10", "-m rt --rt-type 0 --rt-0-addrs fd00::10 --rt-0-not-strict",
             "-m rt ! --rt-segsleft 2", "-m frag --fragid 7:8", "-m frag --fragmore", "-m frag --fraglast --fragfirst",
             "-m frag --fraglen 99", "-p udp", "-p 0", "! -p udp", "-p udp --dport 53"]
    assert ipt_hits(rules, packets) == [2, 2, 0, 1, 0, 2, 1, 1, 0, 1, 0, 2, 1, 1, 2, 6, 6, 0, 6]


def test_ipv6header_exact_soft_and_inverted() -> None:
    packets = [udp(), udp("hbh"), udp("hbh", "frag,id=1"),
               Packet.make("fd00::5", "fd00::10", 59, exthdrs=["hbh"]), Packet.make("fd00::5", "fd00::10", "esp")]
    rules = ["-m ipv6header --header protocol", "-m ipv6header --header hop-by-hop,protocol",
             "-m ipv6header --header hop-by-hop --soft", "-m ipv6header ! --header hop-by-hop --soft",
             "-m ipv6header ! --header hop-by-hop,frag --soft", "-m ipv6header ! --header hop-by-hop,protocol",
             "-m ipv6header --header hop-by-hop,none", "-m ipv6header --header esp"]
    # soft inverted: none of the listed headers present (not "not all of them")
    assert ipt_hits(rules, packets) == [1, 1, 3, 2, 2, 4, 1, 1]


# ---- nft ----------------------------------------------------------------------------------------

def nft_hits(rules: list[str], packets: list[Packet], conntrack: bool = False,
             chains: list[tuple[str, str, list[str]]] | None = None) -> tuple[list[int], list[str]]:
    node = Node.from_description(HOST)
    chains = chains or [("in", "type filter hook input priority 0;", rules)]
    script = "table ip6 t {\n" + "".join(
        f"\tchain {n} {{\n\t\t{head}\n" + "".join(f"\t\t{r} counter\n" for r in rs) + "\t}\n" for n, head, rs in chains)
    rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), stdin=script + "}\n")
    assert rc == 0, err
    node.nftables = rs
    assert attach(node) == []
    fates = [node.receive(p, "eth0").fate for p in packets]
    tbl = rs.find("ip6", "t")
    assert tbl is not None
    return [r.stmts[-1].packets for c in tbl.chains.values() for r in c.rules], fates


def test_nft_exthdr_fields_come_from_the_header_octets() -> None:
    packets = [udp("hbh,opt=5:2", "dst"), udp("rt,type=4,segs=1,addr=fd00::10,addr=fd00::7"),
               udp("frag,offset=0,mf=1,id=70000,res2=1"), udp("dst", "hbh")]
    rules = ["hbh nexthdr 60", "hbh hdrlength 0", "dst nexthdr udp", "dst nexthdr 0", "srh last-entry 1",
             "srh sid[2] fd00::7", "rt0 addr[1] fd00::10", "rt0 addr[3] ::", "rt seg-left 1", "frag id 70000",
             "frag reserved2 1", "frag more-fragments 1", "frag frag-off 0", "ip6 nexthdr 0", "ip6 nexthdr 60",
             "meta l4proto udp", "meta l4proto 0", "udp dport 53", "th dport 53", "exthdr rt missing"]
    got, _ = nft_hits(rules, packets)
    assert got == [1, 2, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 4, 0, 4, 4, 3]


def test_a_mobility_header_is_not_found_past_a_non_first_fragment() -> None:
    mh = Packet.make("fd00::5", "fd00::10", 135, icmp_type=5, exthdrs=["hbh"])
    hidden = Packet.make("fd00::5", "fd00::10", 135, icmp_type=5, exthdrs=["frag,offset=4"])
    got, _ = nft_hits(["exthdr mh exists", "mh type binding-update", "exthdr frag exists"], [mh, hidden])
    assert got == [1, 1, 1]


CT_CHAINS = [("early", "type filter hook prerouting priority -450;", ["frag id 8 notrack", "exthdr frag exists"]),
             ("raw", "type filter hook prerouting priority -300;", ["exthdr frag exists", "exthdr frag missing"]),
             ("in", "type filter hook input priority 0;", ["ct state new", "ct state untracked", "exthdr frag exists"])]


def test_defrag_with_conntrack_on() -> None:
    """Atomic fragment: on without its header, 8 octets shorter. First fragment: queued (stolen). A
    non-last fragment of 20 data octets: -EPROTO, on untouched. ``notrack`` before -400: on whole."""
    packets = [udp("frag,id=1"), udp("frag,mf=1,id=2"),
               Packet.make("fd00::5", "fd00::10", "tcp", 1, 80, exthdrs=["frag,mf=1,id=3"], length=68),
               udp("frag,mf=1,id=8")]
    got, fates = nft_hits([], packets, chains=CT_CHAINS)
    assert fates == ["delivered", "stolen", "delivered", "delivered"]
    assert got == [1, 4, 2, 1, 2, 1, 2]
    node = Node.from_description(HOST)
    rc, _, err, rs = run_nft(["-f", "-"], Ruleset(), stdin="table ip6 t {\n chain c {\n type filter hook input priority 0;\n"
                                                         " ct state new counter\n }\n}\n")
    assert rc == 0, err
    node.nftables = rs
    attach(node)
    res = node.receive(udp("hbh", "frag,id=1", "dst"), "eth0")
    assert [h.name for h in res.packet.exthdrs] == ["hbh", "dst"] and res.packet.length == 56 + 16 - 8
    stolen = node.receive(udp("frag,mf=1,id=2"), "eth0", trace=True)
    assert stolen.summary() == "taken by nf_defrag_ipv6 (a fragment waiting for the rest of its datagram) in PREROUTING"
    assert node.receive(udp("frag,mf=1,id=4", length=48), "eth0").fate == "dropped"       # no data


def test_without_conntrack_fragments_reach_the_rules_whole() -> None:
    got, fates = nft_hits(["exthdr frag exists", "frag more-fragments 1"], [udp("frag,id=1"), udp("frag,mf=1,id=2")])
    assert fates == ["delivered", "delivered"] and got == [2, 1]


# ---- the command line ---------------------------------------------------------------------------

def test_packet_specs_take_exthdr_words_and_count_their_length() -> None:
    spec = parse_spec_args(["--iif", "eth0", "--src", "fd00::5", "--dst", "fd00::10", "-p", "udp", "--dport", "53",
                            "--exthdr", "hbh,opt=5:2", "--exthdr", "frag,mf=1,id=9"])
    p = spec.packet(4000)
    assert [h.name for h in p.exthdrs] == ["hbh", "frag"] and p.length == 29 + 16
    with pytest.raises(SpecError, match=r"^f:2: --exthdr rt,addr=x: addr: invalid IPv6 address \"x\"$"):
        parse_packet_file("--local --dst fd00::1\n--local --dst fd00::1 --exthdr rt,addr=x\n", "f")
    with pytest.raises(SpecError, match="extension headers need an IPv6 packet"):
        parse_spec_args(["--local", "--dst", "10.0.0.1", "--exthdr", "hbh"])


def test_trace_sends_extension_headers_through_ip6tables(tmp_path) -> None:
    import kproxy.cli.commands  # noqa: F401

    desc = tmp_path / "node.yaml"
    desc.write_text(yaml.safe_dump(HOST))
    node = str(tmp_path / "n.db")

    def run(*args: str):
        return CliRunner().invoke(cli, ["--node", node, *args])

    assert run("node", "init", "--from", str(desc)).exit_code == 0
    assert run("ip6tables", "-A", "INPUT", "-m", "rt", "--rt-type", "0", "-j", "DROP").exit_code == 0
    base = ["trace", "--iif", "eth0", "--src", "fd00::5", "--dst", "fd00::10", "-p", "udp", "--dport", "53", "--json"]
    res = run(*base, "--exthdr", "hbh,opt=5:2", "--exthdr", "rt,type=0,segs=0,addr=fd00::10")
    assert json.loads(res.output)[0]["fate"] == "dropped", res.output
    assert json.loads(run(*base, "--exthdr", "rt,type=4,addr=fd00::10").output)[0]["fate"] == "delivered"
    bad = run(*base, "--exthdr", "rt,type=x")
    assert bad.exit_code == 2 and 'Error: arguments: --exthdr rt,type=x: type: "x" is not a number' in bad.output


def test_log_lines_walk_the_extension_headers_as_dump_ipv6_packet_does() -> None:
    node = Node.from_description(HOST)
    node.iptables_restore("*filter\n-A INPUT -p udp -j LOG --log-prefix \"a \"\n"
                          "-A INPUT -j LOG --log-prefix \"b \" --log-ip-options\nCOMMIT\n", family=6)
    node.receive(udp("hbh", "frag,mf=1,id=255"), "eth0")
    assert node.log_lines[-2].endswith("LEN=64 TC=0 HOPLIMIT=64 FLOWLBL=0 FRAG:0 INCOMPLETE ID:000000ff "
                                       "PROTO=UDP SPT=4000 DPT=53 LEN=8")
    assert "FLOWLBL=0 OPT ( ) OPT ( FRAG:0 INCOMPLETE ID:000000ff ) PROTO=UDP SPT=4000" in node.log_lines[-1]
    node.receive(udp("frag,offset=2,id=1"), "eth0")
    assert node.log_lines[-1].endswith("FLOWLBL=0 OPT ( FRAG:16 ID:00000001 ) PROTO=UDP")


def test_trace_notes_that_a_non_first_fragments_ports_are_still_read(tmp_path) -> None:
    import kproxy.cli.commands  # noqa: F401

    res = CliRunner().invoke(cli, ["--node", str(tmp_path / "n.db"), "trace", "--local", "--dst", "fd00::1", "-p",
                                   "udp", "--dport", "53", "--exthdr", "frag,offset=4"])
    assert "note: a non-first fragment's ports are payload to the kernel" in res.output
