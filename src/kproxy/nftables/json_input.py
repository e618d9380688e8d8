"""``nft -j -f``: libnftables' JSON schema read into the nft script the text front end understands.

nft parses JSON into the same command tree as its text grammar and evaluates both alike, so the
decoder here only checks the JSON's shape (with the messages of nft 1.0.6's parser_json.c) and
writes each command as one line of nft script; the script then runs as one transaction. The
evaluation errors that follow carry no position, as in nft, where JSON commands are "internal".
"""

from __future__ import annotations

import json
import re
from typing import Any

from kproxy.nftables.expr import CT, PAYLOAD, fmt_time
from kproxy.nftables.types import SET_TYPES

FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
VERBS = ("add", "replace", "create", "insert", "delete", "list", "reset", "flush", "rename")
OBJECTS = ("table", "chain", "rule", "set", "map", "element", "flowtable", "counter", "quota", "ct helper",
           "ct timeout", "ct expectation", "limit", "secmark")
VERDICTS = ("accept", "drop", "continue", "return", "jump", "goto")
BINOPS = ("|", "^", "&", "<<", ">>")
BARE = re.compile(r"[A-Za-z0-9_.:/\-]+\Z")
JSON_TYPES = {dict: "object", list: "array", str: "string", int: "integer", float: "real", bool: "true",
              type(None): "null"}


class JsonError(Exception):
    """nft's messages for a JSON command it cannot parse: (column of the format string, or None, text)."""

    def __init__(self, *msgs: tuple[int | None, str]) -> None:
        super().__init__(msgs[-1][1])
        self.msgs = list(msgs)

    def then(self, msg: str) -> JsonError:
        """The same error followed by one more line, as each enclosing parser adds its own."""
        return JsonError(*self.msgs, (None, msg))


def typename(v: Any) -> str:
    if v is False:
        return "false"
    return JSON_TYPES.get(type(v), "object")


def unpack(obj: Any, fmt: str, *keys: str) -> list[Any]:
    """jansson's ``{s:s, s:o, ...}`` (``fmt`` has one letter per key: s string, i integer, o any value):
    each key present with a value of its kind, else the error at the key's value in the format string
    (column 4, 9, 14, ...), which nft reports as the location."""
    if not isinstance(obj, dict):
        raise JsonError((1, f"Expected object, got {typename(obj)}"))
    out = []
    for i, (kind, k) in enumerate(zip(fmt, keys)):
        col = 4 + 5 * i
        if k not in obj:
            raise JsonError((col, f"Object item not found: {k}"))
        v = obj[k]
        if kind == "i" and (not isinstance(v, int) or isinstance(v, bool)) or kind == "s" and not isinstance(v, str):
            raise JsonError((col, f"Expected {'integer' if kind == 'i' else 'string'}, got {typename(v)}"))
        out.append(v)
    return out


def opt(obj: dict[str, Any], key: str, kind: type) -> Any:
    """An optional property: its value when present with the right kind, else None (json_unpack's silence)."""
    v = obj.get(key)
    if v is None or isinstance(v, bool) and kind is not bool or not isinstance(v, kind):
        return None
    return v


def quote(s: str) -> str:
    """A name or value as nft script: bare when it is one word, else in double quotes."""
    return s if BARE.match(s) and s not in ("@", "$") else quoted(s)


def quoted(s: Any) -> str:
    """A string in double quotes (comments, prefixes, object names)."""
    s = str(s)
    if '"' in s or any(ord(c) < 32 for c in s):
        raise JsonError((None, f"kproxy: {json.dumps(s)} cannot be written in nft's text, which this front end"
                               " reads JSON through"))
    return f'"{s}"'


def family_of(name: str) -> str:
    if name not in FAMILIES:
        raise JsonError((None, f"Unknown family '{name}'."))
    return name


def decode(text: str) -> list[Any] | None:
    """The command array of a JSON document, or None when the text is not JSON (nft then tries its
    text parser); a document of the wrong shape is a JsonError."""
    try:
        root = json.loads(text)
    except ValueError:
        return None
    if not isinstance(root, dict):
        raise JsonError((1, f"Expected object, got {typename(root)}"))
    (cmds,) = unpack(root, "o", "nftables")
    if not isinstance(cmds, list):
        raise JsonError((None, 'Value of property "nftables" must be an array.'))
    return cmds


def script(cmds: list[Any]) -> list[str]:
    """One line of nft script per command (metainfo items skipped)."""
    lines = []
    for i, cmd in enumerate(cmds):
        if not isinstance(cmd, dict):
            raise JsonError((None, f"Unexpected command array element of type {typename(cmd)}, expected object."))
        if "metainfo" in cmd:
            version = cmd["metainfo"].get("json_schema_version") if isinstance(cmd["metainfo"], dict) else None
            if isinstance(version, int) and not isinstance(version, bool) and version > 1:
                raise JsonError((None, f"Schema version {version} not supported, maximum supported version is 1\n"),
                                (None, "Metainfo verification failed."))
            continue
        try:
            lines.append(command(cmd))
        except JsonError as err:
            raise err.then(f"Parsing command array at index {i} failed.") from None
    return lines


def command(cmd: dict[str, Any]) -> str:
    for verb in VERBS:
        if verb in cmd:
            if verb in ("insert", "replace"):
                (rule,) = unpack(cmd[verb], "o", "rule")
                return replace_rule(verb, rule)
            if verb == "rename":
                return rename_chain(cmd[verb])
            return object_command(verb, cmd[verb])
    return object_command("add", cmd)


# What each verb takes (parser_json's tables); add, create and delete share the add command's parser.
LIST_MULTIPLE = ("tables", "chains", "sets", "maps", "counters", "quotas", "ct helpers", "limits", "ruleset",
                 "meters", "flowtables", "secmarks")
VERB_OBJECTS = {
    "list": ("table", "tables", "chain", "chains", "set", "sets", "map", "maps", "counter", "counters", "quota",
             "quotas", "ct helper", "ct helpers", "ct timeout", "ct expectation", "limit", "limits", "ruleset",
             "meter", "meters", "flowtable", "flowtables", "secmark", "secmarks"),
    "reset": ("counter", "counters", "quota", "quotas"),
    "flush": ("table", "chain", "set", "map", "meter", "ruleset"),
}


def object_command(verb: str, body: Any) -> str:
    parser = verb if verb in VERB_OBJECTS else "add"
    if not isinstance(body, dict):
        raise JsonError((None, f"Value of {parser} command must be object (got {typename(body)} instead)."))
    for kind in VERB_OBJECTS.get(verb, OBJECTS):
        if kind in body:
            if verb == "create" and kind == "rule":
                raise JsonError((None, "Create command not available for rules."))
            if kind in LIST_MULTIPLE:
                return list_multiple(verb, kind, body[kind])
            return OBJECT_WRITERS.get(kind, unsupported)(verb, kind, body[kind])
    raise JsonError((None, f"Unknown object passed to {parser} command."))


def list_multiple(verb: str, kind: str, body: Any) -> str:
    """``list tables [FAMILY]``, ``list sets [table FAMILY NAME]``, ``flush ruleset``, ..."""
    out = f"{verb} {kind}"
    fam = opt(body, "family", str) if isinstance(body, dict) else None
    if fam is not None:
        family_of(fam)
        table = opt(body, "table", str) if kind in ("sets", "counters", "ct helpers") else None
        out += f" table {fam} {quote(table)}" if table is not None else f" {fam}"
    return out


def rename_chain(body: Any) -> str:
    """``{"rename": {"chain": {family, table, name, newname}}}``, jansson's nested ``{s:{s:s, ...}}``."""
    (chain,) = unpack(body, "o", "chain")
    if not isinstance(chain, dict):
        raise JsonError((4, f"Expected object, got {typename(chain)}"))
    for i, k in enumerate(("family", "table", "name", "newname")):
        if not isinstance(chain.get(k), str):
            found = f"Expected string, got {typename(chain[k])}" if k in chain else f"Object item not found: {k}"
            raise JsonError((7 + 5 * i, found))
    family_of(chain["family"])
    return f"rename chain {chain['family']} {quote(chain['table'])} {quote(chain['name'])} {quote(chain['newname'])}"


def unsupported(verb: str, kind: str, body: Any) -> str:
    raise JsonError((None, f"kproxy: JSON {kind} objects are not supported."))


def named(verb: str, kind: str, body: Any, keys: tuple[str, ...]) -> tuple[str, str]:
    """``FAMILY TABLE [NAME]`` or ``... handle N`` for delete, checked as nft checks them."""
    vals = unpack(body, "s" * len(keys), *keys)
    fam = vals[0]
    where = " ".join(quote(v) for v in vals[1:])
    if verb == "delete" and "name" not in body and kind != "ct helper":     # 1.0.6: a ct helper by name only
        h = opt(body, "handle", int)
        if h is None:
            raise JsonError((None, f"Either name or handle required to delete a {kind}."))
        family_of(fam)
        return fam, f"{where} handle {h}".strip()
    (name,) = unpack(body, "s", "name")
    family_of(fam)
    return fam, f"{where} {quote(name)}".strip()


def w_table(verb: str, kind: str, body: Any) -> str:
    fam, where = named(verb, kind, body, ("family",))
    return f"{verb} table {fam} {where}"


def w_chain(verb: str, kind: str, body: Any) -> str:
    fam, where = named(verb, kind, body, ("family", "table"))
    out = f"{verb} chain {fam} {where}"
    if verb in ("delete", "list", "flush") or not all(k in body for k in ("type", "hook", "prio")):
        return out
    hook = body["hook"]
    if hook not in ("prerouting", "input", "forward", "output", "postrouting", "ingress", "egress"):
        raise JsonError((None, f"Invalid chain hook '{hook}'."))
    spec = f"type {body['type']} hook {hook}"
    if isinstance(body.get("dev"), str):
        spec += f" device {quote(body['dev'])}"
    elif isinstance(body.get("dev"), list) and body["dev"]:
        spec += " devices = { " + ", ".join(quote(str(d)) for d in body["dev"]) + " }"
    spec += f" priority {body['prio']};"
    policy = opt(body, "policy", str)
    if policy is not None:
        if policy not in ("accept", "drop"):
            raise JsonError((None, f"Unknown policy '{policy}'."))
        spec += f" policy {policy};"
    return f"{out} {{ {spec} }}"


def w_rule(verb: str, kind: str, body: Any) -> str:
    fam, table, chain = unpack(body, "sss", "family", "table", "chain")
    if verb == "delete":
        (h,) = unpack(body, "i", "handle")
        family_of(fam)
        return f"delete rule {fam} {quote(table)} {quote(chain)} handle {h}"
    (exprs,) = unpack(body, "o", "expr")
    family_of(fam)
    where = f" index {body['index']}" if opt(body, "index", int) is not None else ""
    return rule_text(f"{verb} rule {fam} {quote(table)} {quote(chain)}{where}", body, exprs)


def replace_rule(verb: str, body: Any) -> str:
    """``insert`` and ``replace`` take the rule's handle as its position (parser_json's cmd_replace)."""
    fam, table, chain, exprs = unpack(body, "ssso", "family", "table", "chain", "expr")
    h, idx = opt(body, "handle", int), opt(body, "index", int)
    if verb == "replace" and not h:
        raise JsonError((None, "Handle is required when replacing a rule."))
    family_of(fam)
    head = f"{verb} rule {fam} {quote(table)} {quote(chain)}"
    if h:
        head += f" handle {h}" if verb == "replace" else f" position {h}"
    elif idx is not None:
        head += f" index {idx}"
    return rule_text(head, body, exprs)


def rule_text(head: str, body: dict[str, Any], exprs: Any) -> str:
    if not isinstance(exprs, list):
        raise JsonError((None, 'Value of property "expr" must be an array.'))
    words = [head]
    for i, st in enumerate(exprs):
        if not isinstance(st, dict):
            raise JsonError((None, f"Unexpected expr array element of type {typename(st)}, expected object."))
        try:
            words.append(stmt(st))
        except JsonError as err:
            raise err.then(f"Parsing expr array at index {i} failed.") from None
    comment = opt(body, "comment", str)
    if comment is not None:
        words.append(f"comment {quoted(comment)}")
    return " ".join(words)


SET_FLAGS = ("constant", "interval", "timeout")


def w_set(verb: str, kind: str, body: Any) -> str:
    fam, where = named(verb, kind, body, ("family", "table"))
    if verb == "delete" and " handle " in f" {where}":
        kind = "set"        # the kernel deletes a map by handle as a set (nft's text grammar has no map by handle)
    out = f"{verb} {kind} {fam} {where}"
    if verb in ("delete", "list", "flush"):
        return out
    typ = body.get("type")
    if isinstance(typ, list) and typ and all(isinstance(t, str) for t in typ):
        key = " . ".join(typ)
    elif isinstance(typ, str):
        key = typ
    else:
        raise JsonError((None, "Invalid set type."))
    data = opt(body, "map", str)
    if data is not None and data not in SET_TYPES and data not in ("counter", "quota", "limit"):
        raise JsonError((None, f"Invalid map type '{data}'."))  # one type name: no concatenations here
    parts = [f"type {key}" + (f" : {data}" if data is not None else "")]
    policy = opt(body, "policy", str)
    if policy is not None:
        if policy not in ("performance", "memory"):
            raise JsonError((None, f"Unknown set policy '{policy}'."))
        parts.append(f"policy {policy}")
    flags = body.get("flags")
    if isinstance(flags, list):
        for i, f in enumerate(flags):
            if f not in SET_FLAGS:
                raise JsonError((None, f"Invalid set flag at index {i}."))
        if flags:
            parts.append("flags " + ",".join(flags))
    for key, word in (("timeout", "timeout"), ("gc-interval", "gc-interval")):
        secs = opt(body, key, int)
        if secs is not None:
            parts.append(f"{word} {fmt_time(secs * 1000)}")
    size = opt(body, "size", int)
    if size is not None:
        parts.append(f"size {size}")
    if "elem" in body:
        try:
            parts.append(f"elements = {set_expr(body['elem'])}")
        except JsonError as err:
            raise err.then("Invalid set elem expression.") from None
    return f"{out} {{ {'; '.join(parts)}; }}"


def w_element(verb: str, kind: str, body: Any) -> str:
    fam, table, name, elems = unpack(body, "ssso", "family", "table", "name", "elem")
    family_of(fam)
    try:
        lit = set_expr(elems)
    except JsonError as err:
        raise err.then("Invalid set.") from None
    return f"{verb} element {fam} {quote(table)} {quote(name)} {lit}"


def w_object(verb: str, kind: str, body: Any) -> str:
    fam, where = named(verb, kind, body, ("family", "table"))
    out = f"{verb} {kind} {fam} {where}"
    if verb in ("delete", "list", "reset"):
        return out
    if kind == "counter":
        spec = f"packets {opt(body, 'packets', int) or 0} bytes {opt(body, 'bytes', int) or 0}"
    elif kind == "ct helper":
        typ, proto = unpack(body, "ss", "type", "protocol")
        spec = f"type {quoted(typ)} protocol {proto}"
        if opt(body, "l3proto", str):
            spec += f"; l3proto {body['l3proto']}"
    elif kind == "quota":
        spec = ("over " if body.get("inv") else "") + byte_units(opt(body, "bytes", int) or 0)
        if opt(body, "used", int):
            spec += f" used {byte_units(body['used'])}"
    else:
        unpack(body, "is", "rate", "per")
        spec = limit_spec(body)
    comment = opt(body, "comment", str)
    if comment is not None:
        spec = f"comment {quoted(comment)}; {spec}"
    return f"{out} {{ {spec}; }}"


def byte_units(n: int) -> str:
    """A byte count in the largest unit that divides it, as nft lists the quota the kernel holds."""
    units = ("bytes", "kbytes", "mbytes")       # nft reads and writes no bigger unit
    i = 0
    while n and n % 1024 == 0 and i < len(units) - 1:
        n //= 1024
        i += 1
    return f"{n} {units[i]}"


def limit_spec(d: dict[str, Any]) -> str:
    over = "over " if d.get("inv") else ""
    unit = d.get("rate_unit")
    if unit and unit != "packets":
        s = f"rate {over}{d['rate']} {unit}/{d['per']}"
        if d.get("burst"):
            s += f" burst {d['burst']} {d.get('burst_unit', 'bytes')}"
        return s
    s = f"rate {over}{d['rate']}/{d['per']}"
    if d.get("burst") is not None:
        s += f" burst {d['burst']} packets"
    return s


def w_flowtable(verb: str, kind: str, body: Any) -> str:
    """``{"flowtable": {family, table, name, hook, prio, dev}}``: nft -j's listing read back."""
    fam, where = named(verb, kind, body, ("family", "table"))
    out = f"{verb} flowtable {fam} {where}"
    if verb in ("delete", "list"):
        return out
    hook, prio = unpack(body, "si", "hook", "prio")
    spec = f"hook {hook} priority {prio};"
    devs = body.get("dev")
    if isinstance(devs, str):
        devs = [devs]
    if isinstance(devs, list) and devs:
        spec += " devices = { " + ", ".join(quote(str(d)) for d in devs) + " };"
    return f"{out} {{ {spec} }}"


OBJECT_WRITERS = {"table": w_table, "chain": w_chain, "rule": w_rule, "set": w_set, "map": w_set,
                  "element": w_element, "counter": w_object, "quota": w_object, "limit": w_object,
                  "ct helper": w_object,
                  "flowtable": w_flowtable}


# ---- statements -------------------------------------------------------------------------------
def one_key(d: dict[str, Any]) -> tuple[str, Any]:
    if len(d) != 1:
        raise JsonError((None, f"Malformed object (too many properties): '{json.dumps(d)}'."))
    return next(iter(d.items()))


def stmt(d: dict[str, Any]) -> str:
    key, val = one_key(d)
    if key in VERDICTS:
        return verdict(key, val)
    if key == "vmap":
        return map_expr(val, "vmap")
    writer = STMTS.get(key)
    if writer is None:
        raise JsonError((None, f"Unknown statement object '{key}'."))
    return writer(key, val)


def verdict(key: str, val: Any) -> str:
    if key in ("jump", "goto"):
        if not isinstance(val, dict) or not isinstance(val.get("target"), str):
            raise JsonError((None, f"Missing jump target in {key} verdict."))
        return f"{key} {quote(val['target'])}"
    return key


def s_match(key: str, val: Any) -> str:
    left, right, op = unpack(val, "oos", "left", "right", "op")
    lt = expr(left, "Invalid LHS of relational.")
    rt = expr(right, "Invalid RHS of relational.", rhs=True)
    if op in ("==", "in") and not isinstance(right, list):
        return f"{lt} {rt}"
    if op == "in":
        return f"{lt} {rt}"
    if op not in ("==", "!=", "<", ">", "<=", ">="):
        raise JsonError((None, f"Unknown relational op '{op}'."))
    return f"{lt} {op} {rt}"


def s_named(key: str, val: Any) -> str | None:
    """A counter, quota or limit statement that uses a named object: ``{"counter": "c1"}``, ``counter name
    "c1"``, or the one a map picks, ``{"counter": {"map": ...}}``, ``counter name KEY map ...``; else None."""
    if isinstance(val, str):
        return f"{key} name {quoted(val)}"
    if isinstance(val, dict) and "map" in val:
        return f"{key} name {expr(val, f'Invalid {key} reference', rhs=True)}"
    return None


def s_counter(key: str, val: Any) -> str:
    if (named := s_named(key, val)) is not None:
        return named
    if isinstance(val, dict) and ("packets" in val or "bytes" in val):
        return f"counter packets {val.get('packets', 0)} bytes {val.get('bytes', 0)}"
    return "counter"


def s_mangle(key: str, val: Any) -> str:
    k, v = unpack(val, "oo", "key", "value")
    return f"{expr(k, 'Invalid mangle statement key')} set {expr(v, 'Invalid mangle statement value', rhs=True)}"


def s_quota(key: str, val: Any) -> str:
    if (named := s_named(key, val)) is not None:
        return named
    (v,) = unpack(val, "i", "val")
    s = "quota " + ("over " if val.get("inv") else "") + f"{v} {val.get('val_unit', 'bytes')}"
    if opt(val, "used", int):
        s += f" used {val['used']} {val.get('used_unit', 'bytes')}"
    return s


def s_ct_helper(key: str, val: Any) -> str:
    return f"ct helper set {expr(val, 'Invalid ct helper reference', rhs=True)}"


def s_limit(key: str, val: Any) -> str:
    if (named := s_named(key, val)) is not None:
        return named
    unpack(val, "is", "rate", "per")
    return "limit " + limit_spec(val)


def s_log(key: str, val: Any) -> str:
    if not isinstance(val, dict):
        return "log"
    s = "log"
    for k, word in (("prefix", "prefix"), ("group", "group"), ("snaplen", "snaplen"),
                    ("queue-threshold", "queue-threshold"), ("level", "level")):
        if k in val:
            s += f" {word} {quoted(val[k])}" if k == "prefix" else f" {word} {val[k]}"
    flags = val.get("flags")
    if flags:
        s += "".join(f" flags {f}" for f in (flags if isinstance(flags, list) else [flags]))
    return s


def s_nat(key: str, val: Any) -> str:
    if not isinstance(val, dict):
        return key
    s = key
    if isinstance(val.get("family"), str):
        s += f" {val['family']}"
    addr = expr(val["addr"], "Invalid nat addr expression", rhs=True) if "addr" in val else None
    port = expr(val["port"], "Invalid nat port expression", rhs=True) if "port" in val else None
    if addr is not None or port is not None:
        s += " to"
    if addr is not None:
        s += f" {'[' + addr + ']' if port is not None and ':' in addr and not addr.startswith('{') else addr}"
    if port is not None:
        s += (" " if addr is None else "") + f":{port}"
    flags = val.get("flags")
    if flags:
        s += " " + (",".join(flags) if isinstance(flags, list) else flags)
    return s


def s_reject(key: str, val: Any) -> str:
    if not isinstance(val, dict) or "type" not in val:
        return "reject"
    if val["type"] == "tcp reset":
        return "reject with tcp reset"
    code = val.get("expr")
    return f"reject with {val['type']}" + (f" {code}" if isinstance(code, str) else "")


def s_set(key: str, val: Any) -> str:
    op, elem, name = unpack(val, "sos", "op", "elem", "set")
    if op not in ("add", "update", "delete"):
        raise JsonError((None, f"Unknown set statement op '{op}'."))
    inner = expr(elem, "Illegal set statement element")
    for st in val.get("stmt", []) if isinstance(val.get("stmt"), list) else []:
        inner += " " + stmt(st)
    return f"{op} {name} {{ {inner} }}"


def s_simple(key: str, val: Any) -> str:
    return key


def s_queue(key: str, val: Any) -> str:
    if not isinstance(val, dict):
        return "queue"
    s = "queue"
    flags = val.get("flags")
    if flags:
        s += "".join(f" flags {f}" for f in (flags if isinstance(flags, list) else [flags]))
    if "num" in val:
        s += f" to {expr(val['num'], 'Invalid queue num', rhs=True)}"
    return s


def s_dup(key: str, val: Any) -> str:
    if not isinstance(val, dict):
        raise JsonError((None, f"Invalid {key} statement."))
    s = f"{key} to {expr(val.get('addr', val.get('dev')), 'Invalid dup addr', rhs=True)}" \
        if key == "dup" else f"fwd to {expr(val.get('dev'), 'Invalid fwd dev', rhs=True)}"
    if key == "dup" and "dev" in val:
        s += f" device {expr(val['dev'], 'Invalid dup dev', rhs=True)}"
    return s


def s_flow(key: str, val: Any) -> str:
    """``{"flow": {"op": "add", "flowtable": "@ft"}}`` (parser_json's flow offload statement)."""
    op, ft = unpack(val, "ss", "op", "flowtable")
    if op != "add":
        raise JsonError((None, f"Unknown flow offload statement op '{op}'."))
    if not ft.startswith("@"):
        raise JsonError((None, "Illegal flowtable reference in flow offload statement."))
    return f"flow add @{quote(ft[1:])}"


STMTS = {"match": s_match, "counter": s_counter, "mangle": s_mangle, "quota": s_quota, "limit": s_limit,
         "log": s_log, "snat": s_nat, "dnat": s_nat, "masquerade": s_nat, "redirect": s_nat, "reject": s_reject,
         "set": s_set, "notrack": s_simple, "queue": s_queue, "dup": s_dup, "fwd": s_dup,
         "flow": s_flow, "ct helper": s_ct_helper}


# ---- expressions ------------------------------------------------------------------------------
def expr(v: Any, context: str, rhs: bool = False) -> str:
    """An expression in nft's text; ``context`` is nft's message when it is not one."""
    try:
        return expression(v, rhs)
    except JsonError as err:
        raise err.then(context) from None


def expression(v: Any, rhs: bool = False) -> str:
    if isinstance(v, bool):
        return "exists" if v else "missing"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return v if v[:1] in ("@", "$") else quote(v)
    if isinstance(v, list):
        return ",".join(expression(i, rhs) for i in v)
    if not isinstance(v, dict):
        raise JsonError((None, f"Unexpected JSON type {typename(v)} for immediate value."))
    key, val = one_key(v)
    writer = EXPRS.get(key)
    if key in VERDICTS:
        return verdict(key, val)
    if writer is None:
        raise JsonError((None, f"Unknown expression type '{key}'."))
    return writer(key, val)


def e_payload(key: str, val: Any) -> str:
    if isinstance(val, dict) and "base" in val:
        return f"@{val['base']},{val.get('offset', 0)},{val.get('len', 0)}"
    proto, field = unpack(val, "ss", "protocol", "field")
    if proto not in PAYLOAD:
        raise JsonError((None, f"Unknown payload protocol '{proto}'."))
    if field not in PAYLOAD[proto]:
        raise JsonError((None, f"Unknown {proto} field '{field}'."))
    return f"{proto} {field}"


META_KEYS = ("length, protocol, priority, mark, iif, oif, iifname, oifname, iiftype, oiftype, skuid, skgid, "
             "nftrace, rtclassid, secmark, nfproto, l4proto, ibrname, obrname, pkttype, cpu, iifgroup, oifgroup, "
             "cgroup, random, ipsec, iifkind, oifkind, ibrpvid, ibrvproto, time, day, hour, sdif, sdifname")


def e_meta(key: str, val: Any) -> str:
    (k,) = unpack(val, "s", "key")
    if k not in META_KEYS.split(", "):
        raise JsonError((None, f"syntax error, unexpected {k}, known keys are {META_KEYS}"))
    return f"meta {k}"


def e_ct(key: str, val: Any) -> str:
    (k,) = unpack(val, "s", "key")
    if k not in CT:
        raise JsonError((None, f"Unknown ct key '{k}'."))
    words = ["ct"]
    if isinstance(val.get("dir"), str):
        words.append(val["dir"])
    if isinstance(val.get("family"), str):
        words.append(val["family"])
    return " ".join([*words, k])


def e_rt(key: str, val: Any) -> str:
    (k,) = unpack(val, "s", "key")
    if k not in ("classid", "nexthop", "mtu", "ipsec"):
        raise JsonError((None, f"Unknown rt key '{k}'."))
    family = val.get("family")
    return f"rt {family} {k}" if family in ("ip", "ip6") else f"rt {k}"


def e_exthdr(key: str, val: Any) -> str:
    """``{"exthdr": {"name": "frag", "field": "id"}}``; no field: the header's presence."""
    from kproxy.nftables.exthdr import HEADERS

    (name,) = unpack(val, "s", "name")
    if name not in HEADERS:
        raise JsonError((None, f"Invalid exthdr protocol '{name}'."))
    if name in ("rt0", "rt2"):
        # nft 1.0.6 reads these two by raw offset only (and says so at the file's position)
        raise JsonError((None, "Object item not found: offset"))
    fld = opt(val, "field", str)
    if fld is None:
        return f"exthdr {name}"
    m = re.fullmatch(r"([a-z-]+)\[(\d+)\]", fld)
    base = m.group(1) + "[]" if m else fld
    if base not in HEADERS[name][1]:
        raise JsonError((None, f"Unknown {name} field {fld}."))
    return f"{name} {fld}"


def e_fib(key: str, val: Any) -> str:
    (result,) = unpack(val, "s", "result")
    flags = val.get("flags", [])
    flags = [flags] if isinstance(flags, str) else flags
    return f"fib {' . '.join(flags)} {result}"


def e_numgen(key: str, val: Any) -> str:
    mode, mod = unpack(val, "si", "mode", "mod")
    s = f"numgen {mode} mod {mod}"
    if opt(val, "offset", int):
        s += f" offset {val['offset']}"
    return s


def e_hash(key: str, val: Any) -> str:
    (mod,) = unpack(val, "i", "mod")
    s = key + (f" {expression(val['expr'])}" if "expr" in val else "") + f" mod {mod}"
    if opt(val, "seed", int):
        s += f" seed 0x{val['seed']:x}"
    if opt(val, "offset", int):
        s += f" offset {val['offset']}"
    return s


def e_tcpopt(key: str, val: Any) -> str:
    (name,) = unpack(val, "s", "name")
    return f"tcp option {name}" + (f" {val['field']}" if isinstance(val.get("field"), str) else "")


def e_concat(key: str, val: Any) -> str:
    if not isinstance(val, list):
        raise JsonError((None, "Expected concat value to be an array."))
    return " . ".join(expression(i) for i in val)


def e_binop(key: str, val: Any) -> str:
    if not isinstance(val, list) or len(val) != 2:
        raise JsonError((None, f"Invalid binop expression: '{key}'."))
    right = val[1]
    if isinstance(right, list) and len(right) > 1:
        # a flag list (``tcp flags & [syn, rst]``): nft's text for the same value is an | of its flags
        return f"{expression(val[0])} {key} ({' | '.join(expression(i) for i in right)})"
    return f"{expression(val[0])} {key} {expression(right)}"


def e_prefix(key: str, val: Any) -> str:
    addr, ln = unpack(val, "oi", "addr", "len")
    return f"{expression(addr)}/{ln}"


def e_range(key: str, val: Any) -> str:
    if not isinstance(val, list) or len(val) != 2:
        raise JsonError((None, "Invalid range expression, expected array of two values."))
    return f"{expression(val[0])}-{expression(val[1])}"


def e_set(key: str, val: Any) -> str:
    return set_expr(val)


def set_expr(val: Any) -> str:
    """``{ a, b : c, ... }``; a lone value or set reference stands for itself."""
    if isinstance(val, str) and val.startswith("@"):
        return val
    items = val if isinstance(val, list) else [val]
    return "{ " + ", ".join(set_item(i) for i in items) + " }"


def set_item(v: Any) -> str:
    if isinstance(v, list) and len(v) == 2:
        return f"{set_item(v[0])} : {expression(v[1], True)}"
    return expression(v, True)


def e_elem(key: str, val: Any) -> str:
    (inner,) = unpack(val, "o", "val")
    s = expression(inner, True)
    for k in ("timeout", "expires"):
        if opt(val, k, int) is not None:
            s += f" {k} {fmt_time(val[k] * 1000)}"
    if isinstance(val.get("comment"), str):
        s += f" comment {quoted(val['comment'])}"
    return s


def e_map(key: str, val: Any) -> str:
    return map_expr(val, "map")


def map_expr(val: Any, word: str) -> str:
    k, data = unpack(val, "oo", "key", "data")
    return f"{expression(k)} {word} {expression(data, True)}"


EXPRS = {"payload": e_payload, "meta": e_meta, "ct": e_ct, "rt": e_rt, "exthdr": e_exthdr, "fib": e_fib, "numgen": e_numgen,
         "jhash": e_hash, "symhash": e_hash, "tcp option": e_tcpopt, "concat": e_concat, "prefix": e_prefix,
         "range": e_range, "set": e_set, "elem": e_elem, "map": e_map, **{op: e_binop for op in BINOPS}}
