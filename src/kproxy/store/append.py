"""``iptables -A`` into a chain still unread: checked on its own, appended to the chain's row as text.

Appending one rule to a chain of 100,000 would otherwise read and parse all of them, check them
again at commit, count their jumps and print them back: seconds for one rule. The kernel's checks
of an append concern the new rule only (its chain's hook and table, its jump target, its
extensions), so they run on a probe table whose copy of the chain holds just the new rules; the
old rules were checked when they were committed.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from kproxy.iptables.commands import CommandError, apply, format_error, prog_name, validate
from kproxy.iptables.model import STANDARD_VERDICTS, Chain, Rule, rule_uses
from kproxy.iptables.parser import ParameterProblem, parse_command
from kproxy.iptables.save import format_rule
from kproxy.iptables.state import copy_table
from kproxy.layered import cow_copy
from kproxy.store.chains import StoredChain, rule_state

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.node import Node


def fast_append(node: Node, argv: list[str], family: int) -> tuple[int, str, str] | None:
    """Run ``argv`` as an append to an unread chain and commit it in memory, or say why not as the
    tool does; None when it is not such a command (the general path then runs it)."""
    try:
        c = parse_command(argv, family)
    except Exception:
        return None
    state = node.iptables[family]
    base = state.tables.get(c.table)
    if base is None or c.cmd != "A":
        return None
    old = base.chains.get(c.chain)
    if not isinstance(old, StoredChain) or not old.pending:
        return None
    probe = copy_table(base)
    probe.chains[c.chain] = Chain(old.name, old.policy, [], old.packets, old.bytes)
    assert probe.owned is not None
    probe.owned.add(c.chain)
    try:
        apply(probe, c)
        validate(probe, node)
    except (ParameterProblem, CommandError) as exc:      # the new rule's own error, as the tool words it
        rc, err = format_error(exc, prog_name(family))
        return rc, "", err
    added: list[Rule] = probe.chains[c.chain].rules
    if any(r.jump is not None and r.jump not in STANDARD_VERDICTS for r in added):
        return None      # a jump to a user chain: the general path checks the jump graph (loops, depth)
    text, state_json = old.stored_row()
    lines = "\n".join(format_rule(c.chain, r, counters=True) for r in added)
    states = json.loads(state_json) if state_json else []
    offset = text.count("\n") + 1 if text else 0
    states += [[i + offset, j, v] for i, j, v in rule_state(added)]
    row = (f"{text}\n{lines}" if text else lines, json.dumps(states, separators=(",", ":")) if states else None)
    assert old._source is not None
    chain = StoredChain(old.name, old.policy, old.packets, old.bytes, old._source, row)
    chain.written = True
    work = copy_table(base)
    work.chains[c.chain] = chain
    assert work.owned is not None
    work.owned.add(c.chain)
    refs = cow_copy(base.jump_counts())
    for r in added:
        if r.jump is not None:
            refs[r.jump] = refs.get(r.jump, 0) + 1
    work.refs = refs
    uses = dict(base.use_counts())       # kept from the file: the unread chain stays unread
    for r in added:
        for key in rule_uses(r):
            uses[key] = uses.get(key, 0) + 1
    work.uses = uses
    state.note = [(c.table, "A", c.chain)]
    state.commit({c.table: work})
    return 0, "", ""
