"""The ``iptables`` commands (-A -I -D -R -C -N -X -F -Z -P -E -L -S) applied to a table.

``apply`` edits a working copy of one table, so both ``iptables`` (one command, then commit)
and ``iptables-restore`` (many commands, then COMMIT) get the kernel's all-or-nothing behaviour.
Errors carry the real tool's text and exit status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kproxy.iptables.extension import refusal
from kproxy.iptables.jumps import too_deep
from kproxy.iptables.model import STANDARD_VERDICTS, Chain, Rule, Table
from kproxy.iptables.parser import Command, ParameterProblem, clone_rule, parse_command
from kproxy.iptables.save import rule_spec

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.node import Node

VERSION = "v1.8.9 (nf_tables)"
NO_INPUT_DEV = ("OUTPUT", "POSTROUTING")
OPERATION = {"A": "RULE_APPEND", "I": "RULE_INSERT", "R": "RULE_REPLACE"}
NO_OUTPUT_DEV = ("PREROUTING", "INPUT")


class CommandError(Exception):
    """A command the kernel (or the tool after parsing) refuses; ``rc`` is the tool's exit status."""

    def __init__(self, message: str, rc: int = 1, kind: str = "other", rule: Rule | None = None) -> None:
        super().__init__(message)
        self.rc = rc
        self.kind = kind   # "other": "iptables: MSG"; "param": prefixed + usage hint; "resource": prefixed
        self.rule = rule   # the rule refused, when the kernel refused one at commit


def _no_chain() -> CommandError:
    return CommandError("No chain/target/match by that name.")


def writable_chain(table: Table, name: str) -> Chain:
    """The chain to change (made private to the working copy); a missing chain is the tool's error."""
    if name not in table.chains:
        raise _no_chain()
    return table.writable(name)


def check_devices(chain: str, rule: Rule) -> None:
    """The interface restrictions of built-in chains (``Can't use -o with INPUT``)."""
    if rule.oif is not None and chain in NO_OUTPUT_DEV:
        raise ParameterProblem(f"Can't use -o with {chain}\n")
    if rule.iif is not None and chain in NO_INPUT_DEV:
        raise ParameterProblem(f"Can't use -i with {chain}\n")


def check_target_allowed(table: Table, chain: str, rule: Rule) -> None:
    """Targets restricted to tables or hooks (DNAT only in nat PREROUTING/OUTPUT...) fail like the kernel."""
    for m in rule.matches:      # a plain loop: this runs for every rule of a restore
        if m.CHECKS_ENTRY:
            errno = refusal(m, table.name, chain, rule)
            if errno is not None:
                raise _refused(chain, errno)
    t = rule.target
    if t is not None and t.CHECKS_ENTRY:
        errno = refusal(t, table.name, chain, rule)
        if errno is not None:
            raise _refused(chain, errno)


def _refused(chain: str, errno: str = "Invalid argument") -> CommandError:
    return CommandError(f" RULE_APPEND failed ({errno}): rule in chain {chain}", rc=4, kind="resource")


def find_rule(chain: Chain, rule: Rule) -> int:
    """The index of the first rule equal to ``rule`` (compared in canonical form), or -1."""
    want = rule_spec(rule)
    for i, r in enumerate(chain.rules):
        if rule_spec(r) == want:
            return i
    return -1


def apply(table: Table, c: Command) -> None:
    """Apply one modifying command to ``table`` (a working copy); raise CommandError/ParameterProblem."""
    handler = _HANDLERS.get(c.cmd)
    if handler is None:
        raise ParameterProblem(f"unsupported command -{c.cmd}")
    handler(table, c)


def _append(table: Table, c: Command) -> None:
    for r in c.rules:
        append_rule(table, c.chain, r)


def append_rule(table: Table, name: str, r: Rule) -> None:
    """``-A``: check the rule against its chain as the kernel does, then append it."""
    chain = writable_chain(table, name)
    check_rule(table, name, r)
    chain.rules.append(r)


def check_rule(table: Table, name: str, r: Rule) -> None:
    """What the tool and the kernel check when a rule is added to chain ``name``."""
    if r.iif is not None or r.oif is not None:
        check_devices(name, r)
    if r.target is not None or r.matches:
        check_target_allowed(table, name, r)


def _insert(table: Table, c: Command) -> None:
    chain = writable_chain(table, c.chain)
    pos = (c.rulenum or 1) - 1
    if pos > len(chain.rules):
        raise CommandError("Index of insertion too big.")
    for k, r in enumerate(c.rules):
        check_devices(c.chain, r)
        check_target_allowed(table, c.chain, r)
        chain.rules.insert(pos + k, r)


def _replace(table: Table, c: Command) -> None:
    chain = writable_chain(table, c.chain)
    if len(c.rules) != 1:
        raise ParameterProblem("-R requires a single source and destination")
    if c.rulenum > len(chain.rules):
        raise CommandError("Index of replacement too big.")
    r = c.rules[0]
    check_devices(c.chain, r)
    check_target_allowed(table, c.chain, r)
    chain.rules[c.rulenum - 1] = r


def _delete(table: Table, c: Command) -> None:
    chain = writable_chain(table, c.chain)
    if c.rulenum and not c.has_rule:
        if c.rulenum > len(chain.rules):
            raise CommandError("Index of deletion too big.")
        del chain.rules[c.rulenum - 1]
        return
    for r in c.rules:
        i = find_rule(chain, r)
        if i < 0:
            raise CommandError("Bad rule (does a matching rule exist in that chain?).")
        del chain.rules[i]


def _new_chain(table: Table, c: Command) -> None:
    if c.chain in table.chains:
        raise CommandError("Chain already exists.")
    table.add_chain(Chain(c.chain))


def _busy(name: str) -> CommandError:
    return CommandError(f" CHAIN_DEL failed (Device or resource busy): chain {name}", rc=4, kind="resource")


def _delete_chain(table: Table, c: Command) -> None:
    """-X: references left behind are found when the table is validated (at COMMIT for a restore)."""
    names = [c.chain] if c.chain else [n for n, ch in table.chains.items() if not ch.builtin]
    for name in names:
        chain = table.chains.get(name)
        if chain is None:
            raise _no_chain()
        if chain.builtin or (c.chain and chain.rules):
            raise _busy(name)
    for name in names:
        table.remove_chain(name)


def _flush(table: Table, c: Command) -> None:
    if c.chain and c.chain not in table.chains:
        raise _no_chain()
    for name in [c.chain] if c.chain else list(table.chains):
        table.flush(name)


def _zero(table: Table, c: Command) -> None:
    chains = [writable_chain(table, c.chain)] if c.chain else list(table.chains.values())
    for ch in chains:
        if c.rulenum:       # a number past the end zeroes nothing and is no error, as with iptables-nft
            positions = [c.rulenum - 1] if c.rulenum <= len(ch.rules) else []
        else:
            positions = list(range(len(ch.rules)))
            ch.packets = ch.bytes = 0
        for i in positions:
            r = clone_rule(ch.rules[i])
            r.packets = r.bytes = 0
            ch.rules[i] = r


def _policy(table: Table, c: Command) -> None:
    chain = table.chains.get(c.chain)
    if chain is None or not chain.builtin:
        raise CommandError("Bad built-in chain name.")
    if c.arg not in ("ACCEPT", "DROP"):
        raise CommandError("Bad policy name. Run `dmesg' for more information.")
    table.writable(c.chain).policy = c.arg


def _rename(table: Table, c: Command) -> None:
    chain = writable_chain(table, c.chain)
    if chain.builtin:
        raise CommandError("Bad built-in chain name.")
    if c.arg in table.chains:
        raise CommandError("File exists.")
    table.remove_chain(c.chain)
    table.add_chain(Chain(c.arg, None, chain.rules))
    for name in [n for n, ch in table.chains.items() if any(r.jump == c.chain for r in ch.rules)]:
        ch = table.writable(name)
        for i, r in enumerate(ch.rules):
            if r.jump == c.chain:
                ch.rules[i] = clone_rule(r)
                ch.rules[i].jump = c.arg


_HANDLERS = {"A": _append, "I": _insert, "R": _replace, "D": _delete, "N": _new_chain, "X": _delete_chain,
             "F": _flush, "Z": _zero, "P": _policy, "E": _rename}


def validate(table: Table, node: Node | None = None) -> None:
    """What the kernel checks when a table is committed: jump targets exist; extensions agree."""
    from kproxy.iptables.extension import ExtensionError

    if table.deleted:
        refs = table.jump_counts()
        for name in sorted(table.deleted):
            if refs.get(name, 0) > 0 and name not in table.chains:
                raise _busy(name)
    changed = table.chains.values() if table.owned is None else [table.chains[n] for n in table.owned]
    chains = table.chains
    for ch in changed:
        for r in ch.rules:
            jump = r.jump
            if jump is not None and jump not in chains and jump not in STANDARD_VERDICTS:
                raise ParameterProblem(f"Chain '{jump}' does not exist")
            if node is not None:
                try:
                    for m in r.matches:
                        if m.CHECKS_NODE:
                            m.check(node)
                    if r.target is not None and r.target.CHECKS_NODE:
                        r.target.check(node)
                except ExtensionError as exc:
                    if exc.kernel_errno:        # the kernel's checkentry refused it: the tool names the chain
                        raise CommandError(f" RULE_APPEND failed ({exc.kernel_errno}): rule in chain {ch.name}",
                                           rc=4, kind="resource", rule=r) from None
                    raise ParameterProblem(str(exc)) from None


def too_many_links(op: str, chain: str) -> CommandError:
    return CommandError(f" {op} failed (Too many links): rule in chain {chain}", rc=4, kind="resource")


def verbose_echo(table: Table, c: Command, verbose: bool = False) -> str:
    """What ``-v`` (``c.verbose``, or ``verbose`` for a restore) makes the tool print for a change: each rule
    given, or each chain flushed, zeroed, deleted."""
    if not (c.verbose or verbose):
        return ""
    from kproxy.iptables.listing import echo_rule

    if c.cmd in ("A", "I", "R", "D", "C"):
        return "".join(echo_rule(r, table.family) for r in c.rules)
    verb = {"F": "Flushing", "Z": "Zeroing", "L": "Zeroing", "X": "Deleting"}.get(c.cmd)
    if verb is None:
        return ""
    names = [c.chain] if c.chain else [n for n, ch in table.chains.items() if c.cmd != "X" or not ch.builtin]
    return "".join(f"{verb} chain `{n}'\n" for n in names)


USAGE_FORMS = ["-[ACD] chain rule-specification [options]", "-I chain [rulenum] rule-specification [options]",
               "-R chain rulenum rule-specification [options]", "-D chain rulenum [options]",
               "-[LS] [chain [rulenum]] [options]", "-[FZ] [chain] [options]", "-[NX] chain",
               "-E old-chain-name new-chain-name", "-P chain target [options]", "-h (print this help information)"]
HELP_COMMANDS = [
    ("-A", "--append", "chain", "add rules at the end of a chain"), ("-C", "--check", "chain", "is there such a rule?"),
    ("-D", "--delete", "chain [rulenum]", "delete a rule, by its specification or number"),
    ("-I", "--insert", "chain [rulenum]", "insert rules (at the top by default)"),
    ("-R", "--replace", "chain rulenum", "replace one rule"), ("-L", "--list", "[chain [rulenum]]", "list rules"),
    ("-S", "--list-rules", "[chain [rulenum]]", "print rules as iptables-save writes them"),
    ("-F", "--flush", "[chain]", "delete every rule (of all chains by default)"),
    ("-Z", "--zero", "[chain [rulenum]]", "reset packet and byte counters"),
    ("-N", "--new-chain", "chain", "create a user chain"), ("-X", "--delete-chain", "[chain]", "delete empty user chains"),
    ("-P", "--policy", "chain target", "set a built-in chain's policy"),
    ("-E", "--rename-chain", "old new", "rename a user chain"),
]
HELP_OPTIONS = [
    ("-4", "--ipv4", "", "nothing (line is ignored by ip6tables-restore)"), ("-6", "--ipv6", "", "error (line is ignored by iptables-restore)"),
    ("-p", "--protocol", "proto", "protocol by number or name"), ("-s", "--source", "address[/mask][...]", "source"),
    ("-d", "--destination", "address[/mask][...]", "destination"), ("-i", "--in-interface", "name[+]", "input interface"),
    ("-j", "--jump", "target", "target or chain to jump to"), ("-g", "--goto", "chain", "go to the chain, not returning"),
    ("-m", "--match", "match", "an extended match"), ("-n", "--numeric", "", "addresses and ports as numbers"),
    ("-o", "--out-interface", "name[+]", "output interface"), ("-t", "--table", "table", "table to change (default filter)"),
    ("-v", "--verbose", "", "verbose mode"), ("-w", "--wait", "[seconds]", "wait for the xtables lock"),
    ("-x", "--exact", "", "exact counters"), ("-f", "--fragment", "", "second and further fragments only"),
    ("", "--line-numbers", "", "print line numbers when listing"), ("-c", "--set-counters", "PKTS BYTES", "set counters"),
    ("-V", "--version", "", "print the version"),
]


def usage(prog: str) -> str:
    """``iptables -h``: the version and the usage forms as the tool prints them, then a summary of the
    commands and options (in kproxy's words)."""
    lines = [f"{prog} {VERSION}", "", f"Usage: {prog} {USAGE_FORMS[0]}"]
    lines += [f"       {prog} {form}" for form in USAGE_FORMS[1:]]
    lines += ["", "Commands:", "Either long or short options are allowed."]
    lines += [f"  {long:<15}{short} {arg:<20}{text}" for short, long, arg, text in HELP_COMMANDS]
    lines += ["", "Options:"]
    lines += [f"  {(long if not short else f'{short}, {long}'):<22}{arg:<22}{text}" for short, long, arg, text in HELP_OPTIONS]
    return "\n".join(lines) + "\n"


def prog_name(family: int) -> str:
    return "iptables" if family == 4 else "ip6tables"


def format_error(exc: Exception, prog: str) -> tuple[int, str]:
    """Exit status and stderr text for an error, worded as the real tool words it."""
    if isinstance(exc, ParameterProblem):
        if not exc.prefixed:
            return 2, f"{exc}\nTry `{prog} -h' or '{prog} --help' for more information.\n"
        hint = f"Try `{prog} -h' or '{prog} --help' for more information.\n" if exc.usage_hint else ""
        return 2, f"{prog} {VERSION}: {exc}\n{hint}"
    assert isinstance(exc, CommandError)
    if exc.kind == "resource":
        return exc.rc, f"{prog} {VERSION}: {exc}\n"
    return exc.rc, f"{prog}: {exc}\n"


def run_iptables(argv: list[str], state: Any, family: int = 4, node: Node | None = None) -> tuple[int, str, str]:
    """One ``iptables`` invocation: (exit status, stdout, stderr). The state changes only on success."""
    import json

    from kproxy.iptables.listing import list_rules, list_table, table_json

    prog = prog_name(family)
    c: Command | None = None
    as_json = "--json" in argv                  # kproxy's own: -L/-S for scripts
    if as_json:
        argv = [a for a in argv if a != "--json"]
    try:
        c = parse_command(argv, family)
        if as_json and c.cmd not in ("L", "S"):
            raise ParameterProblem("--json goes with -L or -S only")
        if c.cmd == "V":
            return 0, f"{prog} {VERSION}\n", ""
        if c.cmd == "h":
            return 0, usage(prog), ""
        if c.cmd in ("L", "S"):
            table = state.get(c.table)
            if c.chain and c.chain not in table.chains:
                raise _no_chain()
            if as_json:
                out = json.dumps(table_json(table, c), indent=1) + "\n"
            else:
                out = list_table(table, c) if c.cmd == "L" else list_rules(table, c)
            if c.zero:
                work = state.working_copy(c.table)
                _zero(work, Command(cmd="Z", chain=c.chain))
                state.commit({c.table: work})
                out += verbose_echo(table, c)
            return 0, out, ""
        work = state.working_copy(c.table)
        if c.cmd == "C":
            chain = writable_chain(work, c.chain)
            for r in c.rules:
                if find_rule(chain, r) < 0:
                    raise CommandError("Bad rule (does a matching rule exist in that chain?).")
            return 0, "", ""
        echo = verbose_echo(work, c)
        apply(work, c)
        validate(work, node)
        if c.cmd in OPERATION and any(r.jump in work.chains for r in c.rules) and too_deep(work):
            raise too_many_links(OPERATION[c.cmd], c.chain)
        state.note = [(c.table, c.cmd, f"{c.chain}\0{c.arg}" if c.cmd == "E" else c.chain)]
        state.commit({c.table: work})
        return 0, echo, "".join(c.warnings)
    except (ParameterProblem, CommandError) as exc:
        rc, err = format_error(exc, prog)
        warned = exc.warnings if isinstance(exc, ParameterProblem) else c.warnings if c is not None else []
        return rc, "", "".join(warned) + err
