"""The node: addresses, routes, address types and descriptions."""

import pytest

from kproxy.node import Node, NodeError, parse_route
from kproxy.packet import parse_addr


def ip(text: str) -> int:
    return parse_addr(text)[1]


def worker() -> Node:
    return Node.from_description({
        "name": "w1",
        "interfaces": [
            {"name": "eth0", "addresses": ["192.168.1.10/24"]},
            {"name": "cni0", "addresses": ["10.244.1.1/24"]},
        ],
        "routes": ["default via 192.168.1.1 dev eth0", "10.244.2.0/24 via 192.168.1.11 dev eth0",
                   "blackhole 10.99.0.0/16"],
    })


def test_longest_prefix_match_picks_the_most_specific_route():
    node = worker()
    assert node.route(4, ip("10.244.2.9")).gateway == ip("192.168.1.11")
    assert node.route(4, ip("10.244.1.9")).dev == "cni0"
    assert node.route(4, ip("10.244.1.9")).gateway is None
    r = node.route(4, ip("8.8.8.8"))
    assert (r.type, r.dev, r.gateway) == ("unicast", "eth0", ip("192.168.1.1"))
    assert r.prefsrc == ip("192.168.1.10")
    assert node.route(4, ip("10.99.3.4")).type == "blackhole"


def test_local_addresses_route_locally_and_have_type_local():
    node = worker()
    assert node.route(4, ip("10.244.1.1")).type == "local"
    assert node.route(4, ip("127.0.0.53")).type == "local"
    assert node.addr_type(4, ip("192.168.1.10")) == "LOCAL"
    assert node.addr_type(4, ip("192.168.1.255")) == "BROADCAST"
    assert node.addr_type(4, ip("224.0.0.1")) == "MULTICAST"
    assert node.addr_type(4, ip("10.244.2.5")) == "UNICAST"
    assert node.addr_type(4, ip("10.99.0.1")) == "BLACKHOLE"


def test_addr_type_limited_to_an_interface():
    node = worker()
    assert node.addr_type(4, ip("192.168.1.10"), dev="eth0") == "LOCAL"
    assert node.addr_type(4, ip("192.168.1.10"), dev="cni0") == "UNICAST"


def test_without_a_route_a_destination_is_unreachable():
    node = Node.from_description({"interfaces": [{"name": "eth0", "addresses": ["192.168.1.10/24"]}]})
    assert node.route(4, ip("8.8.8.8")).type == "unreachable"


def test_default_node_has_eth0_and_a_default_route():
    node = Node.default()
    assert set(node.interfaces) == {"lo", "eth0"}
    assert node.route(4, ip("1.1.1.1")).dev == "eth0"


@pytest.mark.parametrize("desc, message", [
    ({"interfaces": [{"addresses": ["1.2.3.4/24"]}]}, "interfaces[0]: needs a name"),
    ({"interfaces": [{"name": "eth0", "addresses": ["1.2.3.400/24"]}]}, "interfaces[0].addresses"),
    ({"routes": ["10.0.0.0/8 via"]}, "routes[0]"),
    ({"routes": ["10.0.0.0/8 dev eth9"]}, "no interface eth9"),
    ([], "must be a mapping"),
])
def test_bad_descriptions_name_the_field(desc, message):
    with pytest.raises(NodeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Node.from_description(desc, "node.yaml")


def test_route_text_round_trips():
    r = parse_route("10.244.2.0/24 via 192.168.1.11 dev eth0 src 192.168.1.10")
    assert str(r) == "10.244.2.0/24 via 192.168.1.11 dev eth0 src 192.168.1.10"
    assert str(parse_route("default via 192.168.1.1 dev eth0")) == "default via 192.168.1.1 dev eth0"


def test_yaml_errors_carry_line_and_column(tmp_path):
    p = tmp_path / "node.yaml"
    p.write_text("name: x\ninterfaces: [\n")
    with pytest.raises(NodeError, match=r"node.yaml:\d+:\d+"):
        Node.load_description(p)


def test_flow_routes_agree_with_route_for_every_destination():
    """route_for_flow shares a decision among the addresses of a block of the table's longest prefix;
    whatever the order of first packets, each destination gets what ``route`` decides for it alone:
    local addresses inside a block, a device whose several addresses make the source depend on the
    destination, a gateway, an unreachable range."""
    import random

    from kproxy.packet import Packet

    node = Node.from_description({
        "name": "n",
        "interfaces": [{"name": "eth0", "addresses": ["192.168.1.10/24"]},
                       {"name": "eth1", "addresses": ["10.1.0.1/16", "10.1.128.1/17"]}],
        "routes": ["10.2.0.0/16 via 192.168.1.1 dev eth0", "10.3.0.0/20 dev eth1", "unreachable 10.4.0.0/16"],
    })
    rng = random.Random(5)
    dsts = [parse_addr(f"10.{rng.randrange(1, 6)}.{rng.randrange(256)}.{rng.randrange(256)}")[1]
            for _ in range(3000)] + [parse_addr(a)[1] for a in ("192.168.1.10", "192.168.1.77", "10.1.0.1")]
    rng.shuffle(dsts)
    for dst in dsts:
        got, want = node.route_for_flow(Packet(src=1, dst=dst, proto=6)), node.route(4, dst)
        assert (got.type, got.dev, got.gateway, got.prefsrc) == (want.type, want.dev, want.gateway, want.prefsrc), dst
    assert {node.route_for_flow(Packet(src=1, dst=d, proto=6)).prefsrc for d in dsts if d >> 16 == 0x0A01} == \
        {parse_addr("10.1.0.1")[1], parse_addr("10.1.128.1")[1]}


def test_flow_routes_keep_blocks_only_where_no_address_is_local():
    """A decision kept for a whole block must not answer for a local address in it: with a /8 as the
    longest prefix, the block of the node's own 10.0.0.1 and the one of 127.0.0.0/8 answer per
    destination, and the others per block (one entry for thousands of destinations)."""
    from kproxy.packet import Packet

    node = Node.from_description({
        "name": "n",
        "interfaces": [{"name": "eth0", "addresses": ["10.0.0.1/8"]}],
        "routes": ["default via 10.0.0.254 dev eth0"],
    })
    addrs = ["11.2.3.4", "10.9.9.9", "10.0.0.1", "127.0.0.1", "127.1.2.3", "11.200.0.1", "10.0.0.2", "12.0.0.1"]
    for a in addrs + addrs[::-1]:
        dst = parse_addr(a)[1]
        got, want = node.route_for_flow(Packet(src=1, dst=dst, proto=6)), node.route(4, dst)
        assert (got.type, got.dev, got.gateway, got.prefsrc) == (want.type, want.dev, want.gateway, want.prefsrc), a
    for i in range(2000):
        node.route_for_flow(Packet(src=1, dst=parse_addr("11.0.0.0")[1] + i * 97, proto=6))
    blocks, _, dests = node._flow[4]
    assert set(blocks) == {11, 12} and len(dests) == 5
