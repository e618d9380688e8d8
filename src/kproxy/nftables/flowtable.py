"""nft flowtables: ``flowtable NAME { hook ingress priority P; devices = { ... }; counter; flags offload; }``.

Parsed, listed (text and JSON) and deleted as nft 1.0.6 does; the packet path's use of them (offloaded
connections skipping the IP hooks) is ``kproxy.netfilter.offload``. This kernel (CONFIG_NF_FLOW_TABLE
unset) refuses every flowtable, so the kernel's checks are modelled from its source: a new flowtable
needs a hook and a priority (ENOENT), the hook must be ingress (EOPNOTSUPP), and one a rule still
offloads into cannot be deleted (EBUSY).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kproxy.nftables.expr import Opts
from kproxy.nftables.model import Flowtable, Table, priority_text
from kproxy.nftables.stmt import FlowAdd

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.nftables.lexer import Token
    from kproxy.nftables.parser import Parser

FAMILIES = ("ip", "ip6", "inet")


def parse_block(p: Parser, tbl: Table, name: Token, create: bool, defer: bool = False) -> Flowtable:
    """The ``{ ... }`` after ``flowtable NAME`` (the brace already read): a new flowtable, or more devices
    for an existing one (``add``; ``create`` of an existing one is EEXIST). ``defer``: inside a table
    block, where nft's batch adds flowtables after chains, objects and sets, and the handle waits."""
    from kproxy.nftables.parser import NftError, loc

    given = Flowtable(name.text, 0)
    hook_given = False
    while True:
        p.skip_seps()
        if p.accept("}"):
            break
        t = p.next()
        if t.text == "hook":
            given.hook = p.word().text
            kw = p.expect("priority")
            given.prio = priority(p, kw)
            hook_given = True
            p.end_item()
        elif t.text == "devices":
            p.expect("=")
            given.devices = device_list(p)
            p.end_item()
        elif t.text == "counter":
            given.counter = True
        elif t.text == "flags":
            p.expect("offload")
            given.offload = True
            p.end_item()
        else:
            raise p.unexpected(t)
    if tbl.family not in FAMILIES:
        raise NftError("Could not process rule: Operation not supported", loc(name))
    ft = tbl.flowtables.get(name.text)
    if ft is not None:
        if create:
            raise NftError("Could not process rule: File exists", loc(name))
        if hook_given and (given.hook, given.prio) != (ft.hook, ft.prio):
            raise NftError("Could not process rule: Operation not supported", loc(name))
        ft.devices = sorted(set(ft.devices) | set(given.devices))
        return ft
    if not hook_given:
        raise NftError("Could not process rule: No such file or directory", loc(name))
    if given.hook != "ingress":
        raise NftError("Could not process rule: Operation not supported", loc(name))
    given.devices = sorted(set(given.devices))
    if any(set(given.devices) & set(other.devices) for other in tbl.flowtables.values()):
        # nft_register_flowtable_net_hooks: a device serves one flowtable of a table
        raise NftError("Could not process rule: Device or resource busy", loc(name))
    given.handle = 0 if defer else tbl.alloc()
    tbl.flowtables[name.text] = given
    return given


def priority(p: Parser, kw: Token) -> int:
    """``priority filter [+|- N]`` or a number: the netdev family knows only ``filter`` (0)."""
    from kproxy.nftables.parser import NftError, loc

    t = p.word()
    if t.text != "filter":
        try:
            return int(t.text, 0)
        except ValueError:
            raise NftError("invalid priority expression value.", loc(kw, t)) from None
    if p.at("+", "-"):
        sign = p.next().text
        n = p.word()
        return int(n.text) if sign == "+" else -int(n.text)
    return 0


def device_list(p: Parser) -> list[str]:
    if not p.accept("{"):
        return [p.word().text]
    out = [p.word().text]
    while p.accept(","):
        out.append(p.word().text)
    p.expect("}")
    return out


def delete(p: Parser, tbl: Table) -> None:
    """``delete flowtable [FAMILY] TABLE NAME`` or ``... handle N``: EBUSY while a rule offloads into it."""
    from kproxy.nftables.parser import NftError, loc

    at = p.word()
    if at.text == "handle":
        at = p.word()
        ft = next((f for f in tbl.flowtables.values() if str(f.handle) == at.text), None)
    else:
        ft = tbl.flowtables.get(at.text)
    if ft is None:
        raise NftError("Could not process rule: No such file or directory", loc(at))
    if in_use(tbl, ft.name):
        raise NftError("Could not process rule: Device or resource busy", loc(at))
    del tbl.flowtables[ft.name]


def in_use(tbl: Table, name: str) -> bool:
    return any(isinstance(st, FlowAdd) and st.flowtable == name
               for c in tbl.chains.values() for r in c.rules for st in r.stmts)


def text(ft: Flowtable, o: Opts, indent: str = "\t") -> str:
    lines = [f"{indent}flowtable {ft.name} {{" + (f" # handle {ft.handle}" if o.handles else "")]
    if ft.prio is not None:
        prio = priority_text("netdev", ft.hook, ft.prio, o.numeric_prio or o.numeric >= 1)
        lines.append(f"{indent}\thook {ft.hook} priority {prio}")
    if ft.devices:
        lines.append(f"{indent}\tdevices = {{ {', '.join(ft.devices)} }}")
    if ft.counter:
        lines.append(f"{indent}\tcounter")
    if ft.offload:
        lines.append(f"{indent}\tflags offload")
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def to_json(t: Table, ft: Flowtable) -> dict[str, Any]:
    d: dict[str, Any] = {"family": t.family, "name": ft.name, "table": t.name, "handle": ft.handle,
                         "hook": ft.hook, "prio": ft.prio or 0}
    if ft.devices:
        d["dev"] = ft.devices[0] if len(ft.devices) == 1 else ft.devices
    return {"flowtable": d}
