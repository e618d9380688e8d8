"""``nft list ...`` output: nft 1.0.6's text layout (tabs, blank lines, element wrapping) and its JSON."""

from __future__ import annotations

import json
from typing import Any

from kproxy.nftables import cthelper, flowtable
from kproxy.nftables.expr import Concat, Const, Elem, Opts, Prefix, Range, fmt_time
from kproxy.nftables.model import Chain, NSet, Obj, Rule, Ruleset, Table, priority_text

NEWLINE_DELIM = ",\n\t\t\t     "
# Types printed five to a line, and two to a line; all others one to a line (nft's calculate_delim).
FIVE = {"nf_proto", "integer", "inet_proto", "inet_service", "tcp_flag", "mark", "iface_index", "uid", "gid",
        "ct_dir", "classid", "arp_op", "dccp_pkttype"}   # expression.c calculate_delim
TWO = {"ipv4_addr", "ct_state", "ct_status", "pkt_type"}
METAINFO = {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}


BIG_ENDIAN = {"ipv4", "ipv6", "service", "ether"}


def _lead(k: Any) -> Any:
    if isinstance(k, Range):
        return k.lo
    if isinstance(k, Prefix):
        return k.base
    return k


def _const_bytes(c: Const) -> bytes:
    dt = c.ctype
    if isinstance(c.value, str):
        return c.value.encode()[:16].ljust(16, b"\0")
    size = max(1, (dt.bits + 7) // 8) if dt.bits else 4
    order = "big" if dt.kind in BIG_ENDIAN or dt.name == "ether_type" else "little"
    return int(c.value).to_bytes(size, order)  # type: ignore[arg-type]


def elem_sort_key(e: Elem) -> int:
    """nft sorts elements by value; a concatenation's bytes are read as one little-endian number."""
    k = _lead(e.key)
    if isinstance(k, Const):
        if isinstance(k.value, str):
            return int.from_bytes(_const_bytes(k), "little")
        return int(k.value)
    if isinstance(k, Concat):
        data = b"".join(_const_bytes(i) for i in map(_lead, k.items) if isinstance(i, Const))
        return int.from_bytes(data, "little")
    return 0


def elements_text(s: NSet, o: Opts) -> str:
    key = s.key[0].name if len(s.key) == 1 else ""
    out = "{ "
    count = 0
    for i, e in enumerate(s.elems):
        out += e.text(o)
        count += 1
        if i == len(s.elems) - 1:
            break
        if key in FIVE and count < 5 or key in TWO and count < 2:
            out += ", "
        else:
            count = 0
            out += NEWLINE_DELIM
    return out + " }"


def set_text(s: NSet, o: Opts, indent: str = "\t") -> str:
    kind = "map" if s.is_map else "set"
    lines = [f"{indent}{kind} {s.name} {{" + (f" # handle {s.handle}" if o.handles else "")]
    lines.append(f"{indent}\t{s.decl_text()}")
    if s.policy:
        lines.append(f"{indent}\tpolicy {s.policy}")
    if s.size is not None:
        lines.append(f"{indent}\tsize {s.size}")
    if s.flags and not (s.flags == ["timeout"] and s.timeout is not None):  # a lone timeout flag goes unsaid
        lines.append(f"{indent}\tflags {','.join(s.flags)}")
    if s.auto_merge:                # kept in the set's userdata; rule.c lists it after the flags
        lines.append(f"{indent}\tauto-merge")
    if s.timeout is not None:
        lines.append(f"{indent}\ttimeout {fmt_time(s.timeout, o)}")
    if s.gc_interval is not None:
        lines.append(f"{indent}\tgc-interval {fmt_time(s.gc_interval, o)}")
    if s.comment is not None:
        lines.append(f'{indent}\tcomment "{s.comment}"')
    if s.elems:
        lines.append(f"{indent}\telements = {elements_text(s, o)}")
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def obj_body(obj: Obj, o: Opts) -> str:
    v = obj.values
    if obj.kind == cthelper.KIND:
        return cthelper.body_text(obj)
    if obj.kind == "counter":
        return "" if o.stateless else f"packets {v['packets']} bytes {v['bytes']}"
    if obj.kind == "quota":
        s = ("over " if v.get("over") else "") + f"{v['value']} {v['unit']}"
        if v.get("used") and not o.stateless:
            s += f" used {v['used']} {v['used_unit']}"
        return s
    s = "rate " + ("over " if v.get("over") else "")
    if v.get("unit"):
        s += f"{v['rate']} {v['unit']}/{v['per']}"
        if v.get("burst"):
            s += f" burst {v['burst']} {v.get('burst_unit', 'bytes')}"
    else:
        s += f"{v['rate']}/{v['per']}"
        if v.get("burst", 5) != 5:
            s += f" burst {v['burst']} packets"
    return s


def obj_text(obj: Obj, o: Opts, indent: str = "\t") -> str:
    head = f"{indent}{obj.kind} {obj.name} {{" + (f" # handle {obj.handle}" if o.handles else "")
    lines = [head]
    if obj.comment is not None:
        lines.append(f'{indent}\tcomment "{obj.comment}"')
    body = obj_body(obj, o)
    if body:
        lines += [f"{indent}\t{ln}" for ln in body.split("\n")]
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def chain_text(t: Table, c: Chain, o: Opts, indent: str = "\t", rules: bool = True) -> str:
    lines = [f"{indent}chain {c.name} {{" + (f" # handle {c.handle}" if o.handles else "")]
    if c.comment is not None:
        lines.append(f'{indent}\tcomment "{c.comment}"')
    if c.base:
        assert c.hook is not None
        dev = ""
        if len(c.devices) == 1:
            dev = f' device "{c.devices[0]}"'
        elif c.devices:
            dev = " devices = { " + ", ".join(c.devices) + " }"
        prio = priority_text(t.family, c.hook, c.prio, o.numeric_prio or o.numeric >= 1)
        lines.append(f"{indent}\ttype {c.type} hook {c.hook}{dev} priority {prio}; policy {c.policy};")
    if rules:
        for r in c.rules:
            lines.append(f"{indent}\t{r.text(o)}" + (f" # handle {r.handle}" if o.handles else ""))
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def table_text(t: Table, o: Opts, only: str | None = None, chains: bool = True) -> str:
    """The table's block as ``nft list`` prints it; ``chains=False`` leaves its chains out."""
    head = f"table {t.family} {t.name} {{" + (f" # handle {t.handle}" if o.handles else "")
    lines = [head]
    attrs = []
    if t.flags:
        attrs.append(f"\tflags {','.join(t.flags)}")
    if t.comment is not None:
        attrs.append(f'\tcomment "{t.comment}"')
    blocks = []
    if only is None:
        blocks += [obj_text(ob, o) for ob in t.objs.values()]
        blocks += [set_text(s, o) for s in t.sets.values() if not s.anonymous]
        blocks += [flowtable.text(ft, o) for ft in t.flowtables.values()]
        if chains:
            blocks += [chain_text(t, c, o) for c in t.chains.values()]
    lines += attrs
    if t.flags and blocks:
        lines.append("")
    lines.append("\n\n".join(blocks)) if blocks else None
    lines.append("}")
    return "\n".join(lines) + "\n"


def ruleset_text(rs: Ruleset, o: Opts, family: str | None = None) -> str:
    return "".join(table_text(t, o) for t in rs.tables if family is None or t.family == family)


# ---- JSON ------------------------------------------------------------------------------------
def table_json(t: Table) -> dict[str, Any]:
    d: dict[str, Any] = {"family": t.family, "name": t.name, "handle": t.handle}
    if t.flags:
        d["flags"] = t.flags if len(t.flags) > 1 else t.flags[0]
    return {"table": d}


def chain_json(t: Table, c: Chain) -> dict[str, Any]:
    d: dict[str, Any] = {"family": t.family, "table": t.name, "name": c.name, "handle": c.handle}
    if c.base:
        d["type"] = c.type
        d["hook"] = c.hook
        d["prio"] = c.prio
        d["policy"] = c.policy
    return {"chain": d}


def set_json(t: Table, s: NSet, o: Opts) -> dict[str, Any]:
    d: dict[str, Any] = {"family": t.family, "name": s.name, "table": t.name}
    d["type"] = s.key[0].name if len(s.key) == 1 else [k.name for k in s.key]
    d["handle"] = s.handle
    if s.comment is not None:
        d["comment"] = s.comment
    if s.is_map and s.data is not None:
        d["map"] = " . ".join(t.name for t in s.data)
    if s.policy:
        d["policy"] = s.policy
    if s.size is not None:
        d["size"] = s.size
    flags = [f for f in s.flags if f != "dynamic"]
    if s.timeout is not None and "timeout" not in flags:
        flags.append("timeout")  # the kernel flags a set that has a timeout
    if flags:
        d["flags"] = flags
    if s.timeout is not None:
        d["timeout"] = s.timeout // 1000
    if s.gc_interval is not None:
        d["gc-interval"] = s.gc_interval // 1000
    if s.elems:
        d["elem"] = [e.json() for e in s.elems]
    return {"map" if s.is_map else "set": d}


UNIT_BYTES = {"bytes": 1, "kbytes": 1024, "mbytes": 1024 * 1024, "gbytes": 1024 ** 3}


def obj_json(t: Table, ob: Obj, o: Opts) -> dict[str, Any]:
    d: dict[str, Any] = {"family": t.family, "name": ob.name, "table": t.name, "handle": ob.handle}
    if ob.comment is not None:
        d["comment"] = ob.comment
    v = ob.values
    if ob.kind == cthelper.KIND:
        d.update(cthelper.body_json(ob))
    elif ob.kind == "counter":
        d.update(packets=0 if o.stateless else v["packets"], bytes=0 if o.stateless else v["bytes"])
    elif ob.kind == "quota":
        d["bytes"] = v["value"] * UNIT_BYTES[v["unit"]]
        d["used"] = 0 if o.stateless else v.get("used", 0) * UNIT_BYTES[v.get("used_unit", "bytes")]
        d["inv"] = bool(v.get("over"))
    else:
        d.update(rate=v["rate"], per=v["per"])
        if v.get("unit"):
            d["rate_unit"] = v["unit"]
        d["burst"] = v.get("burst", 5 if not v.get("unit") else 0)
        if v.get("over"):
            d["inv"] = True
    return {ob.kind: d}


def rule_json(t: Table, c: Chain, r: Rule, o: Opts) -> dict[str, Any]:
    d: dict[str, Any] = {"family": t.family, "table": t.name, "chain": c.name, "handle": r.handle}
    if r.comment is not None:
        d["comment"] = r.comment
    d["expr"] = [s.json(o) for s in r.stmts]
    return {"rule": d}


def table_items_json(t: Table, o: Opts) -> list[dict[str, Any]]:
    out = [table_json(t)]
    out += [obj_json(t, ob, o) for ob in t.objs.values()]
    out += [set_json(t, s, o) for s in t.sets.values() if not s.anonymous]
    out += [flowtable.to_json(t, ft) for ft in t.flowtables.values()]
    out += [chain_json(t, c) for c in t.chains.values()]
    for c in t.chains.values():
        out += [rule_json(t, c, r, o) for r in c.rules]
    return out


def dump_json(items: list[dict[str, Any]]) -> str:
    return json.dumps({"nftables": [METAINFO, *items]}, separators=(", ", ": "), ensure_ascii=False) + "\n"


def ruleset_json(rs: Ruleset, o: Opts, family: str | None = None) -> str:
    items: list[dict[str, Any]] = []
    for t in rs.tables:
        if family is None or t.family == family:
            items += table_items_json(t, o)
    return dump_json(items)
