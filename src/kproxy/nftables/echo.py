"""``nft --echo``: what a committed transaction added, printed back with the kernel's handles.

nft prints the kernel's notifications for its own batch, so the objects appear in batch order
(per table: the table, its chains, stateful objects, sets with their elements, then rules by handle),
each as an ``add`` command, followed by ``# new generation N by process PID (nft)``. With ``-j`` a
JSON input comes back as given with each new object's handle added, and text commands as JSON items.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any

from kproxy.nftables import flowtable
from kproxy.nftables.expr import Opts, fmt_time
from kproxy.nftables.listing import chain_json, obj_body, obj_json, rule_json, set_json, table_json
from kproxy.nftables.model import Chain, NSet, Ruleset, Table, priority_text


def added(before: Ruleset, after: Ruleset, ops: dict[int, str] | None = None) -> list[tuple[str, Table, Any]]:
    """(kind, table, object) for everything the transaction created, in batch order."""
    out: list[tuple[str, Table, Any]] = []
    for t in after.tables:
        old = before.find(t.family, t.name)
        if old is not None and old.handle != t.handle:
            old = None
        if old is None:
            out.append(("table", t, t))
        out += [("chain", t, c) for c in t.chains.values() if _is_new(old and old.chains.get(c.name), c)]
        out += [("obj", t, ob) for k, ob in t.objs.items() if _is_new(old and old.objs.get(k), ob)]
        for s in t.sets.values():
            if s.anonymous:
                continue
            olds = old.sets.get(s.name) if old else None
            if _is_new(olds, s):
                out.append(("set", t, s))
                olds = None
            seen = {repr(e.key) for e in olds.elems} if olds else set()
            out += [("elem", t, (s, e)) for e in s.elems if repr(e.key) not in seen]
        out += [("flowtable", t, f) for f in t.flowtables.values() if _is_new(old and old.flowtables.get(f.name), f)]
        rules = []
        for c in t.chains.values():
            oldc = old.chains.get(c.name) if old else None
            known = {r.handle for r in oldc.rules} if oldc else set()
            for i, r in enumerate(c.rules):
                op = (ops or {}).get(id(r), "add")
                if r.handle not in known or op == "replace":
                    # the kernel's notification names the rule before, unless the rule is first or last
                    prev = c.rules[i - 1].handle if 0 < i < len(c.rules) - 1 else None
                    rules.append((r.handle, c, r, op, prev))
        out += [("rule", t, x[1:]) for x in sorted(rules, key=lambda x: x[0])]
    return out


def _is_new(old: Any, new: Any) -> bool:
    return old is None or old.handle != new.handle


def echo_text(before: Ruleset, after: Ruleset, o: Opts, generation: int, ops: dict[int, str],
              first_verb: str | None) -> str:
    """The echoed notifications; the kernel reports the new generation only when the batch's first
    message asked for an echo (nft asks for it on what it adds, not on flush or delete)."""
    lines = [_line(kind, t, ob, o) for kind, t, ob in added(before, after, ops)]
    if first_verb in ("add", "create", "insert", "replace", "table"):
        lines.append(f"# new generation {generation} by process {os.getpid()} (nft)")
    return "".join(line + "\n" for line in lines)


def _handle(o: Opts, h: int) -> str:
    return f" # handle {h}" if o.handles else ""


def _line(kind: str, t: Table, ob: Any, o: Opts) -> str:
    where = f"{t.family} {t.name}"
    if kind == "table":
        flags = f" {{ flags {','.join(t.flags)}; }}" if t.flags else ""
        return f"add table {where}{flags}{_handle(o, t.handle)}"
    if kind == "chain":
        return f"add chain {where} {ob.name}{_chain_spec(t, ob, o)}{_handle(o, ob.handle)}"
    if kind == "obj":
        inner = (f"# handle {ob.handle} " if o.handles else "") + obj_body(ob, o)
        return f"add {ob.kind} {where} {ob.name} {{ {inner} }} "
    if kind == "set":
        return f"add {'map' if ob.is_map else 'set'} {where} {ob.name} {{ {_set_spec(ob, o)}}} "
    if kind == "flowtable":
        # flowtable_print_plain: the listing's lines joined by "; ", the handle after the brace
        body = flowtable.text(ob, replace(o, handles=False), indent="").split("\n")[1:-1]
        inner = "".join(line.strip() + "; " for line in body)
        return f"add flowtable {where} {ob.name} {{ {_handle(o, ob.handle).lstrip()}{' ' if o.handles else ''}{inner}}} "
    if kind == "elem":
        s, e = ob
        if s.timeout is not None or e.timeout is not None:
            e = replace(e, expires=e.timeout if e.timeout is not None else s.timeout)
        return f"add element {where} {s.name} {{ {e.text(o)} }}"
    chain, rule, op, prev = ob
    text = f"{'insert' if op == 'insert' else 'add'} rule {where} {chain.name} " + \
        (f"handle {prev} " if prev is not None else "") + rule.text(o) + _handle(o, rule.handle)
    return f"delete rule {where} {chain.name} handle {rule.handle}\n{text}" if op == "replace" else text


def _chain_spec(t: Table, c: Chain, o: Opts) -> str:
    if not c.base or c.hook is None:
        return ""
    prio = priority_text(t.family, c.hook, c.prio, o.numeric_prio or o.numeric >= 1)
    dev = f' device "{c.devices[0]}"' if len(c.devices) == 1 else ""
    return f" {{ type {c.type} hook {c.hook}{dev} priority {prio}; policy {c.policy}; }}"


def _set_spec(s: NSet, o: Opts) -> str:
    parts = [s.decl_text()]
    if s.size is not None:
        parts.append(f"size {s.size}")
    flags = [f for f in s.flags if f not in ("timeout", "dynamic")]
    if flags:
        parts.append(f"flags {','.join(flags)}")
    if s.timeout is not None:
        parts.append(f"timeout {fmt_time(s.timeout, o)}")
    if s.comment is not None:
        parts.append(f'comment "{s.comment}"')
    head = f"# handle {s.handle} " if o.handles else ""
    return head + "".join(p + "; " for p in parts)


def echo_json(before: Ruleset, after: Ruleset, o: Opts) -> str:
    """``-j --echo`` of text commands: the new objects as ``add`` items."""
    items = []
    for kind, t, ob in added(before, after):
        if kind == "table":
            items.append(table_json(t))
        elif kind == "chain":
            items.append(chain_json(t, ob))
        elif kind == "obj":
            items.append(obj_json(t, ob, o))
        elif kind == "set":
            items.append(set_json(t, ob, o))
        elif kind == "rule":
            items.append(rule_json(t, ob[0], ob[1], o))
        elif kind == "flowtable":
            items.append(flowtable.to_json(t, ob))
        else:
            nset, elem = ob
            items.append({"element": {"family": t.family, "table": t.name, "name": nset.name,
                                      "elem": {"set": [elem.json()]}}})
    return _dump([{"add": i} for i in items]) + "\n"


def echo_json_input(cmds: list[Any], before: Ruleset, after: Ruleset) -> str:
    """``-j --echo -f``: the input commands, each new object given its handle (appended, as nft does)."""
    new = added(before, after)
    rules = iter(sorted(ob[1].handle for kind, _, ob in new if kind == "rule"))
    created = {id(ob) for _, _, ob in new}
    for cmd in cmds:
        if not isinstance(cmd, dict) or "metainfo" in cmd:
            continue
        verb = next((v for v in ("add", "create", "insert") if v in cmd), None)
        body = cmd[verb] if verb else cmd
        for kind, val in body.items() if isinstance(body, dict) else ():
            if not isinstance(val, dict):
                continue
            if verb != "insert":
                val.pop("handle", None)  # an add's own handle is dropped, the kernel's appended
            h = _handle_of(kind, val, after, rules, created)
            if h is not None:
                val["handle"] = h
    return _dump(cmds)


def _handle_of(kind: str, val: dict[str, Any], rs: Ruleset, rules: Any, created: set[int]) -> int | None:
    """The handle the kernel gave the object a command created (None when it created nothing)."""
    if kind == "rule":
        return next(rules, None)
    table = val.get("name") if kind == "table" else val.get("table")
    t = rs.find(str(val.get("family", "")), str(table))
    if t is None:
        return None
    name = str(val.get("name"))
    found: Any = {"table": t, "chain": t.chains.get(name), "set": t.sets.get(name), "map": t.sets.get(name),
                  "counter": t.objs.get(("counter", name)), "quota": t.objs.get(("quota", name)),
                  "limit": t.objs.get(("limit", name)), "flowtable": t.flowtables.get(name)}.get(kind)
    return found.handle if found is not None and id(found) in created else None


def _dump(cmds: list[Any]) -> str:
    return json.dumps({"nftables": cmds}, separators=(", ", ": "), ensure_ascii=False)
