"""``iptables-translate`` and ``iptables-restore-translate``: iptables rules as iptables 1.8.9 writes them in nft.

The ip header part of a rule (interfaces, fragment, protocol, addresses) is translated here, each
match and target by its own ``translate``; a rule that has a part without a translation is printed
commented out as the words it was given (each ``!`` blanked, as the tool's parser leaves it). The
restore form declares each table and chain with the types, hooks and priorities the tool uses.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from kproxy.iptables.commands import VERSION, check_devices, usage
from kproxy.iptables.extension import Extension, ExtensionError, Xlate
from kproxy.iptables.model import Net, Rule
from kproxy.iptables.parser import TABLES, Command, ParameterProblem, parse_command, tokenize
from kproxy.iptables.plan import parse_rule_line
from kproxy.iptables.xtutil import proto_word
from kproxy.packet import format_addr
from kproxy.textio import read_text

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.node import Node

# Built-in chains as the translator declares them: (type, hook, priority). Its security table
# keeps priority 0 (iptables-nft's own security chains use 150).
BASE_CHAINS: dict[str, dict[str, tuple[str, str, int]]] = {
    "filter": {"INPUT": ("filter", "input", 0), "FORWARD": ("filter", "forward", 0),
               "OUTPUT": ("filter", "output", 0)},
    "nat": {"PREROUTING": ("nat", "prerouting", -100), "INPUT": ("nat", "input", 100),
            "OUTPUT": ("nat", "output", -100), "POSTROUTING": ("nat", "postrouting", 100)},
    "mangle": {"PREROUTING": ("filter", "prerouting", -150), "INPUT": ("filter", "input", -150),
               "FORWARD": ("filter", "forward", -150), "OUTPUT": ("route", "output", -150),
               "POSTROUTING": ("filter", "postrouting", -150)},
    "raw": {"PREROUTING": ("filter", "prerouting", -300), "OUTPUT": ("filter", "output", -300)},
    "security": {"INPUT": ("filter", "input", 0), "FORWARD": ("filter", "forward", 0),
                 "OUTPUT": ("filter", "output", 0)},
}
VERDICTS = {"ACCEPT": "accept", "DROP": "drop", "RETURN": "return"}
NAT_DROP = "\nThe \"nat\" table is not intended for filtering, the use of DROP is therefore inhibited.\n\n"


class NotTranslated(Exception):
    """A command the translator has no nft form for ("Translation not implemented")."""


def nft_family(family: int) -> str:
    return "ip" if family == 4 else "ip6"


def ifname(key: str, name: str | None, invert: bool) -> str:
    """``iifname "eth*"``: the ``+`` wildcard becomes nft's ``*``; a lone ``+`` matches anything."""
    if name is None or (name == "+" and not invert):
        return ""
    if name == "+":
        return f"{key} \"INVAL/D\""     # the tool's own placeholder for "no interface"
    text = name[:-1] + "*" if name.endswith("+") else name
    return f"{key} {'!= ' if invert else ''}\"{text}\""


def net_text(net: Net) -> str:
    full = 32 if net.family == 4 else 128
    addr = format_addr(net.addr, net.family)
    return addr if net.prefixlen == full else f"{addr}/{net.prefixlen}"


def _addr(key: str, net: Net | None, invert: bool) -> str:
    if net is None:
        return ""
    return f"{key} {'!= ' if invert else ''}{net_text(net)}"


def header_parts(rule: Rule, family: int) -> list[str]:
    """The ip header tests: interfaces, fragment (IPv4), protocol unless a match of that name
    (``-p tcp -m tcp``) says it already, source, destination."""
    fam = nft_family(family)
    parts = [ifname("iifname", rule.iif, rule.iif_inv), ifname("oifname", rule.oif, rule.oif_inv)]
    if rule.fragment is not None:
        parts.append("ip frag-off & 0x1fff " + ("!= 0" if rule.fragment else "0"))
    if rule.proto and not any(m.name == proto_word(rule.proto) for m in rule.matches):
        key = "ip protocol" if family == 4 else "meta l4proto"
        parts.append(f"{key} {'!= ' if rule.proto_inv else ''}{proto_word(rule.proto)}")
    parts.append(_addr(f"{fam} saddr", rule.src, rule.src_inv))
    parts.append(_addr(f"{fam} daddr", rule.dst, rule.dst_inv))
    return [p for p in parts if p]


def verdict_text(rule: Rule, xl: Xlate) -> str | None:
    if rule.jump is not None:
        if rule.jump in VERDICTS:
            return VERDICTS[rule.jump]
        if rule.jump == "QUEUE":
            return None
        return f"{'goto' if rule.goto else 'jump'} {rule.jump}"
    if rule.target is not None:
        return rule.target.translate(xl)
    return ""


def joined(parts: list[str]) -> str:
    """The parts with one space between them: a part that ends in a space (as some of the tool's
    translations do) gets no second one."""
    out = ""
    for p in parts:
        if p:
            out += p if not out or out.endswith(" ") else " " + p
    return out


def rule_text(rule: Rule, family: int) -> str | None:
    """The nft rule body: header tests, matches, ``counter``, verdict, comment; None when any part
    has no translation. The comment is appended after a space of its own, so a verdict that ends
    in a space (MARK's) leaves two before it."""
    xl = Xlate(family, rule)
    parts = header_parts(rule, family)
    for m in rule.matches:
        text = m.translate(xl)
        if text is None:
            return None
        parts.append(text)
    parts.append("counter")
    verdict = verdict_text(rule, xl)
    if verdict is None:
        return None
    parts.append(verdict)
    body = joined(parts)
    if xl.comment is not None:
        return f"{body} comment \"{xl.comment}\""
    return body.rstrip(" ")


def commented(argv: list[str]) -> str:
    """The untranslatable rule as the tool echoes it: every word and a space, ``!`` left empty."""
    return "# " + "".join(("" if w == "!" else w) + " " for w in argv)


def _check(c: Command, family: int, node: Node | None) -> None:
    """What the translator's parser refuses besides what ours does: -i/-o on the wrong built-in
    chain, DROP in the nat table, a named ipset that does not exist."""
    if c.table == "nat" and ((c.cmd == "P" and c.arg == "DROP") or any(r.jump == "DROP" for r in c.rules)):
        raise ParameterProblem(NAT_DROP)
    for r in c.rules:
        check_devices(c.chain, r)
        for e in (*r.matches, r.target):
            if e is not None and e.set_names():
                _check_sets(e, family, node)


def _check_sets(e: Extension, family: int, node: Node | None) -> None:
    """libxt_set's checks when the rule is parsed: the set exists and is of the rule's family."""
    if node is None:
        raise ParameterProblem(f"Set {e.set_names()[0]} doesn't exist.\n")
    try:
        e.check(node)
    except ExtensionError as exc:
        raise ParameterProblem(str(exc)) from None
    for name in e.set_names():
        fam = getattr(node.ipsets.get(name), "family", "inet")
        if fam in ("inet", "inet6") and (fam == "inet6") != (family == 6):
            raise ParameterProblem(f"The protocol family of set {name} is {'IPv6' if fam == 'inet6' else 'IPv4'}, "
                                   "which is not applicable.\n")


def command_text(c: Command, family: int, argv: list[str], restore: bool, dsts: int = 1) -> str:
    """One parsed command as the translator prints it (``nft '...'`` lines, or restore lines)."""
    fam = nft_family(family)
    where = f"{fam} {c.table} {c.chain}"
    lead = "" if restore else "nft "
    if c.cmd in ("A", "I"):
        verb = "add" if c.cmd == "A" else "insert"
        return _rules_text(c, family, argv, f"{verb} rule {where}", restore, dsts)
    if c.cmd == "N":
        return f"{lead}add chain {where}\n"
    if c.cmd == "X":
        return f"{lead}delete chain {fam} {c.table} {c.chain or '(null)'}\n"
    if c.cmd == "F":
        return f"{lead}flush chain {where}\n" if c.chain else f"{lead}flush table {fam} {c.table}\n"
    if c.cmd == "L":
        return f"{lead}list table {fam} {c.table}\n"
    raise NotTranslated()


def _rules_text(c: Command, family: int, argv: list[str], head: str, restore: bool, dsts: int) -> str:
    """Each -s × -d combination is one rule; the tool prints ``nft `` once per source address, and
    a rule without a translation once, commented out, after them."""
    out = ""
    failed = False
    for k, r in enumerate(c.rules):
        if not restore and k % dsts == 0:
            out += "nft "
        body = rule_text(r, family)
        if body is None:
            failed = True
            continue
        out += f"{head} {body}\n" if restore else f"'{head} {body}'\n"
    if failed:
        out += commented(argv) + "\n"
    return out


def run_translate(argv: list[str], family: int, node: Node | None = None) -> tuple[int, str, str]:
    """``iptables-translate ARGS``: exit status, stdout, stderr."""
    from kproxy.iptables.commands import format_error

    prog = "iptables-translate" if family == 4 else "ip6tables-translate"
    try:
        c = parse_as_translator(argv, family)
        if c.cmd == "V":
            return 0, f"{prog} {VERSION}\n", ""
        if c.cmd == "h":
            return 0, usage(prog), ""
        _check(c, family, node)
        return 0, command_text(c, family, argv, restore=False, dsts=_dst_count(c.rules)), "".join(c.warnings)
    except NotTranslated:
        return 1, "nft ", "Translation not implemented\n"
    except ParameterProblem as exc:
        return format_error(exc, prog)[0], "", format_error(exc, prog)[1]


def parse_as_translator(argv: list[str], family: int, restore_table: str | None = None) -> Command:
    """The command parsed; the tool resolves addresses only after its check that the nat table has
    no DROP, so that error wins over a bad address."""
    try:
        if restore_table is not None:
            return parse_rule_line(argv, family, restore_table)
        return _parse_any_table(argv, family)
    except ParameterProblem as exc:
        table = restore_table or next((argv[i + 1] for i, w in enumerate(argv[:-1]) if w in ("-t", "--table")), "")
        bad_address = str(exc).startswith(("host/network", "invalid mask"))
        if bad_address and table == "nat" and _names_drop(argv):
            raise ParameterProblem(NAT_DROP) from None
        raise


def _names_drop(argv: list[str]) -> bool:
    """``-j DROP`` or ``-P CHAIN DROP`` among the words."""
    return any(w in ("-j", "--jump") and argv[i + 1] == "DROP" or w in ("-P", "--policy") and argv[i + 2:i + 3] == ["DROP"]
               for i, w in enumerate(argv[:-1]))


def _parse_any_table(argv: list[str], family: int) -> Command:
    """The command parsed as iptables parses it, except that any table name goes (the translator
    never asks the kernel for the table)."""
    table = None
    args = list(argv)
    for i, w in enumerate(args[:-1]):
        if w in ("-t", "--table") and args[i + 1] not in TABLES:
            table, args[i + 1] = args[i + 1], "filter"
    c = parse_command(args, family)
    if table is not None:
        c.table = table
    return c


def _dst_count(rules: list[Rule]) -> int:
    """How many destination addresses each source address was expanded with (the inner loop of the
    tool's expansion): the leading rules that share the first rule's source."""
    n = 0
    for r in rules:
        if r.src is not rules[0].src:
            break
        n += 1
    return max(n, 1)


USAGE_RESTORE = ("{prog} 1.8.9 (c) 2014 by Pablo Neira Ayuso <pablo@netfilter.org>\n"
                 "Usage: {prog} [-h] [-f <FILE>] [-V]\n\t[ --help ]\n\t[ --file=<FILE> ]\n\t[ --version ]\n")


class _RestoreFailed(Exception):
    def __init__(self, rc: int, message: str) -> None:
        super().__init__(message)
        self.rc = rc


class RestoreTranslator:
    """The restore file read line by line, printing as it goes (the output up to a failing line
    stays printed, as the tool's does)."""

    def __init__(self, family: int, node: Node | None) -> None:
        self.family = family
        self.node = node
        self.fam = nft_family(family)
        self.prog = "iptables-translate-restore" if family == 4 else "ip6tables-translate-restore"
        self.table: str | None = None
        self.out: list[str] = []
        self.warnings: list[str] = []
        # errno as the tool leaves it: a -N of a name it never tried to load as a target extension
        # sets ENOENT (a failed load is remembered, so a second try sets nothing); rule commands reset it
        self.enoent = False
        self.tried: set[str] = set()

    def param_error(self, message: str, lineno: int) -> _RestoreFailed:
        return _RestoreFailed(2, f"{self.prog} {VERSION}: {message}\nError occurred at line: {lineno}\n"
                                 f"Try `{self.prog} -h' or '{self.prog} --help' for more information.\n")

    def line(self, text: str, lineno: int) -> None:
        text = text.strip()
        if not text or text.startswith("#"):
            return
        if text.startswith("*"):
            self.start_table(text[1:].strip(), lineno)
        elif text == "COMMIT":
            self.table = None
        elif text.startswith(":"):
            self.chain(text, lineno)
        else:
            self.command(text, lineno)

    def start_table(self, name: str, lineno: int) -> None:
        if name not in TABLES:
            raise self.param_error(f"{self.prog}: line {lineno} table name '{name}' invalid", lineno)
        self.table = name
        self.out.append(f"add table {self.fam} {name}\n")

    def chain(self, text: str, lineno: int) -> None:
        words = text[1:].split()
        if self.table is None or not words:
            raise self.failed(lineno)
        name = words[0]
        self.tried.add(name)
        policy = words[1] if len(words) > 1 else "-"
        base = BASE_CHAINS[self.table].get(name)
        if base is None or policy == "-":
            self.out.append(f"add chain {self.fam} {self.table} {name}\n")
            return
        kind, hook, prio = base
        self.out.append(f"add chain {self.fam} {self.table} {name} {{ type {kind} hook {hook} priority {prio}; "
                        f"policy {policy.lower()}; }}\n")

    def failed(self, lineno: int) -> _RestoreFailed:
        """The tool's one-line failure; it ends with strerror(ENOENT) while the errno a ``-N`` left behind
        is still set (rule commands reset it), a quirk of iptables 1.8.9's translator."""
        why = ": No chain/target/match by that name." if self.enoent else ""
        return _RestoreFailed(1, f"{self.prog}: line {lineno} failed{why}\n")

    def command(self, text: str, lineno: int) -> None:
        if self.table is None:
            raise self.failed(lineno)
        if text.startswith("["):
            text = text[text.index("]") + 1:].lstrip() if "]" in text else text
        argv = ["-t", self.table, *tokenize(text)]
        verb = next((a for a in argv[2:] if a in _VERBS), "")
        if _VERBS.get(verb) == "rule":
            self.enoent = False
            self.tried.update(argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-j", "--jump", "-g", "--goto"))
        try:
            c = parse_as_translator(argv[2:], self.family, self.table)
            _check(c, self.family, self.node)
            self.out.append(command_text(c, self.family, argv, restore=True, dsts=_dst_count(c.rules)))
            self.warnings += c.warnings
        except ParameterProblem as exc:
            raise self.param_error(str(exc).replace("iptables-restore.", f"{self.prog}."), lineno) from None
        except NotTranslated:
            raise self.failed(lineno) from None
        if _VERBS.get(verb) == "new":
            name = argv[argv.index(verb) + 1] if argv.index(verb) + 1 < len(argv) else ""
            self.enoent = self.enoent or name not in self.tried
            self.tried.add(name)


_VERBS = {**dict.fromkeys(("-A", "--append", "-I", "--insert", "-D", "--delete", "-R", "--replace"), "rule"),
          **dict.fromkeys(("-N", "--new-chain"), "new")}


def run_restore_translate(argv: list[str], family: int, node: Node | None = None,
                          now: float | None = None) -> tuple[int, str, str]:
    """``iptables-restore-translate -f FILE``: exit status, stdout, stderr."""
    prog = "iptables-restore-translate" if family == 4 else "ip6tables-restore-translate"
    path: str | None = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-V", "--version"):
            return 0, f"{prog} v1.8.9\n", ""
        if a in ("-h", "--help"):
            return 1, "", USAGE_RESTORE.format(prog=prog)
        if a in ("-f", "--file") and i + 1 < len(argv):
            path = argv[i + 1]
            i += 1
        elif a.startswith("--file="):
            path = a.split("=", 1)[1]
        elif a.startswith("-f") and len(a) > 2:
            path = a[2:]
        i += 1
    if path is None:
        return 1, "", "ERROR: missing file name\n" + USAGE_RESTORE.format(prog=prog)
    try:
        text = read_text(path)      # "-" is a file name here too (use /dev/stdin), as for the tool
    except OSError:
        return 1, "", f"Cannot open file {path}\n"
    stamp = time.ctime(now)
    tr = RestoreTranslator(family, node)
    tr.out.append(f"# Translated by {prog} v1.8.9 on {stamp}\n")
    try:
        for n, line in enumerate(text.splitlines(), 1):
            tr.line(line, n)
    except _RestoreFailed as exc:
        return exc.rc, "".join(tr.out), "".join(tr.warnings) + str(exc)
    tr.out.append(f"# Completed on {stamp}\n")
    return 0, "".join(tr.out), "".join(tr.warnings)
