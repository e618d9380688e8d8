"""Where an nftables proxier's transactions go: the emulated node's nft, or ``nft -f -`` on a kernel.

A transaction is nft script text in knftables' form (``add table``, ``add chain``, ``flush chain``,
``add rule``, ``add element``, ``delete element``, ...), or the same as operations
(``kproxy.nftables.transaction.Tx``), which the emulated node applies without its text and the kernel
backend prints. Both backends apply it atomically: on an
error nothing changes and ``BackendError`` carries nft's message. ``names`` lists the chains or sets
of the proxier's table (nothing when there is no table), ``delete_table`` removes one table and
nothing else (``kproxy cleanup``), and ``check`` says what the node's nft lacks, if anything.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from kproxy.backends import BackendError

if TYPE_CHECKING:  # pragma: no cover
    from kproxy.nftables.transaction import Tx
    from kproxy.node import Node

TABLE = "kube-proxy"
MIN_NFT = (1, 0, 1)      # knftables refuses older nft: they parse the whole ruleset for any command

# What the proxier's transactions use, tried in order (each probe builds on the ones before it) with
# ``nft --check``: the kernel validates the batch and commits nothing.
FEATURES = (
    ("verdict maps with concatenated keys", "add map {f} {t} m {{ type {a} . inet_proto . inet_service : verdict ; }}"),
    ("set element comments", "add set {f} {t} c {{ type {a} ; }}\nadd element {f} {t} c {{ {ip} comment \"x\" }}"),
    ("dynamic sets with timeouts", "add set {f} {t} d {{ type {a} ; flags dynamic,timeout ; timeout 1s ; }}"),
    ("numgen and anonymous verdict maps", "add chain {f} {t} e\nadd chain {f} {t} n\n"
                                          "add rule {f} {t} n numgen random mod 1 vmap {{ 0 : goto e }}"),
    ("fib expressions", "add rule {f} {t} n fib saddr type local goto e"),
    ("set updates from rules", "add rule {f} {t} e update @d {{ {x} saddr }}"),
    ("nat chains with dnat and fully-random masquerade",
     "add chain {f} {t} p {{ type nat hook postrouting priority 100 ; }}\nadd rule {f} {t} p masquerade fully-random\n"
     "add chain {f} {t} o {{ type nat hook output priority -100 ; }}\nadd rule {f} {t} o meta l4proto tcp dnat to {ep}"),
    ("reject in filter chains", "add chain {f} {t} i {{ type filter hook input priority 0 ; }}\n"
                                "add rule {f} {t} i ct state new reject"),
)


def family_name(family: int) -> str:
    return "ip" if family == 4 else "ip6"


def probe_script(family: int, table: str) -> list[tuple[str, str]]:
    """(feature, a transaction testing it and every feature before it) for a scratch table."""
    f = family_name(family)
    values = {"f": f, "t": table, "a": "ipv4_addr" if family == 4 else "ipv6_addr",
              "ip": "10.0.0.1" if family == 4 else "fd00::1", "x": f,
              "ep": "10.0.0.1:80" if family == 4 else "[fd00::1]:80"}
    script = f"add table {f} {table}\n"
    out = []
    for name, text in FEATURES:
        script += text.format(**values) + "\n"
        out.append((name, script))
    return out


class EmulatedNft:
    """The emulated node's nftables: the ``kproxy nft`` front end, one transaction per run."""

    takes_transactions = True     # ``run`` takes a structured transaction (``kproxy.nftables.transaction``)

    def __init__(self, node: Node, family: int = 4) -> None:
        self.node = node
        self.family = family

    def run(self, text: str | Tx) -> None:
        """``nft -f -`` on the node. A transaction that names only chains and sets of the kube-proxy
        table is parsed into that table in place, with an undo journal (``kproxy.nftables.journal``),
        rather than into a copy of the whole ruleset. (Each ``add element`` line costs what its
        elements do, so a set's lines need no joining into one command.)

        A structured transaction (``kproxy.nftables.transaction.Tx``) is applied without its text;
        if it fails, the table is put back and its text goes the parser's way, for nft's message."""
        from kproxy.nftables.cli import run_nft
        from kproxy.nftables.evaluate import attach
        from kproxy.nftables.journal import journaled, named_objects
        from kproxy.nftables.store import node_ruleset
        from kproxy.nftables.validate import JumpIndex

        if not isinstance(text, str):
            if self._apply(text):
                return
            text = text.text()
        rs = node_ruleset(self.node)
        fam = family_name(self.family)
        table = rs.find(fam, TABLE)
        named = named_objects(text, fam, TABLE) if table is not None else None
        if named is not None and table is not None:
            self._run_in_place(rs, table, text, *named)
            return
        rc, _, err, work = run_nft(["-f", "-"], rs, text, set(self.node.interfaces))
        if rc != 0:
            raise BackendError(err.strip() or f"nft failed ({rc})")
        table = work.find(fam, TABLE)
        journaled(table)      # ready for in-place transactions (a copy now, not at the next one)
        if table is not None:
            JumpIndex.of(table)       # and its reverse jump index, which they keep up to date
        self.node.nftables = work
        attach(self.node)

    def _apply(self, tx: Tx) -> bool:
        """Apply a structured transaction to the kube-proxy table (IPv4: the rule shapes are made for
        it); False (nothing done) when it is not one for this. On an error nothing changes and the
        ``BackendError`` is nft's, as for the transaction's text."""
        from kproxy.nftables.evaluate import attach
        from kproxy.nftables.journal import MISSING, apply_in_place, journaled
        from kproxy.nftables.parser import NftError
        from kproxy.nftables.store import node_ruleset
        from kproxy.nftables.transaction import TxError, apply
        from kproxy.nftables.validate import JumpIndex, touched_too_deep

        rs = node_ruleset(self.node)
        fam = family_name(self.family)
        if tx.family != fam or tx.table != TABLE or fam != "ip":
            return False
        interfaces = set(self.node.interfaces)
        table = rs.find(fam, TABLE)
        if table is None:
            # The table is new: on an error, taking it away again undoes everything.
            tables, next_handle = list(rs.tables), rs.next_table_handle
            try:
                ct = apply(tx, rs, interfaces)
            except TxError as exc:
                rs.tables[:], rs.next_table_handle = tables, next_handle
                self._refused(rs, tx, exc)
            if tx.ops:
                rs.generation += 1          # as for the same text through ``nft -f``
            journaled(rs.find(fam, TABLE))
            made = rs.find(fam, TABLE)
            if made is not None:
                JumpIndex.of(made)    # the reverse jump index the partial syncs' checks keep up to date
            held = self.node.subsystems.get("nftables_ct_refs")
            if held is None and rs.tables == [rs.find(fam, TABLE)]:
                held = {4: 0, 6: 0}                        # the only table: nothing held before it
            users = None
            if ct is not None and held is not None:      # the new table's users, counted as it was made
                users = dict(held)
                users[self.family] += ct
            attach(self.node, users)
            return True
        chains, sets = tx.named()

        def run() -> None:
            apply(tx, rs, interfaces)

        def check(chains_before: dict[str, Any], sets_before: dict[str, Any]) -> None:
            # The kernel's commit-time jump validation from what the transaction touched (as for
            # the text in ``_run_in_place``); the refusal's message is nft's for the text.
            if touched_too_deep(table, chains_before, sets_before, MISSING) is not None:
                JumpIndex.drop(table)                 # the rollback leaves it behind the table
                raise TxError(NftError("Could not process rule: Too many links", None, validation=True))

        try:
            before = apply_in_place(rs, table, chains, sets, run, check)
        except TxError as exc:
            self._refused(rs, tx, exc)
        self._after_in_place(rs, table, before)
        return True

    def _refused(self, rs: Any, tx: Tx, exc: Any) -> NoReturn:
        """Raise nft's error for a transaction that failed (the ruleset is as it was): the text
        checked as ``nft -c -f -`` would, whose message lists every error nft reports."""
        from kproxy.nftables.cli import format_error, run_nft

        text = tx.text()
        rc, _, err, _ = run_nft(["-c", "-f", "-"], rs, text, set(self.node.interfaces))
        raise BackendError(err.strip() if rc != 0 else format_error(exc.error, "/dev/stdin", text).strip())

    def _run_in_place(self, rs: Any, table: Any, text: str, chains: set[str], sets: set[str]) -> None:
        from kproxy.nftables.cli import format_error
        from kproxy.nftables.journal import MISSING, apply_in_place
        from kproxy.nftables.parser import NftError, Parser, jump_errors
        from kproxy.nftables.validate import JumpIndex, touched_too_deep

        interfaces = set(self.node.interfaces)
        parser = Parser(text, rs, interfaces, validate_jumps=False)

        def check(chains_before: dict[str, Any], sets_before: dict[str, Any]) -> None:
            # The kernel's commit-time jump validation, walking only from what the transaction
            # touched (through the table's reverse jump index) rather than the whole table; when it
            # fails, the full walk says which rules the kernel blames, as for any other batch.
            if touched_too_deep(table, chains_before, sets_before, MISSING) is None:
                return
            JumpIndex.drop(table)                 # the rollback leaves it behind the table
            errors = jump_errors([table], parser.added) or [
                NftError("Could not process rule: Too many links", None, validation=True)]
            errors[0].more = errors[1:]
            raise errors[0]

        try:
            before = apply_in_place(rs, table, chains, sets, parser.script, check)
        except NftError as exc:
            raise BackendError(format_error(exc, "/dev/stdin", text).strip()) from None
        self._after_in_place(rs, table, before)

    def _after_in_place(self, rs: Any, table: Any, before: dict[str, Any]) -> None:
        """The hooks and conntrack references after chains of the table changed in place."""
        from kproxy.nftables.evaluate import (
            attach,
            chain_conntrack_users,
            forget_compiled,
            take_conntrack_refs,
        )
        from kproxy.nftables.journal import MISSING

        after = table.chains
        held = self.node.subsystems.get("nftables_ct_refs")
        users = None
        if held is not None:
            users = dict(held)
            users[self.family] += sum(chain_conntrack_users(after.get(c)) -
                                      chain_conntrack_users(None if old is MISSING else old)
                                      for c, old in before.items())
        hooked = any(old is not MISSING and old.hook is not None or after.get(c) is not None and after[c].hook is not None
                     for c, old in before.items())
        if hooked or users is None:
            attach(self.node, users)          # base chains changed: the hooks take the new ones
        else:
            take_conntrack_refs(self.node, rs, users)
            forget_compiled(self.node)        # the hooks stay; the chains they reach compile again

    def names(self, kind: str, table: str = TABLE) -> list[str]:
        from kproxy.nftables.store import node_ruleset

        t = node_ruleset(self.node).find(family_name(self.family), table)
        if t is None:
            return []
        if kind == "chains":
            return list(t.chains)
        return [s.name for s in t.sets.values() if not s.anonymous and not s.is_map]

    def list_table(self, table: str = TABLE) -> str:
        from kproxy.nftables.cli import run_nft
        from kproxy.nftables.store import node_ruleset

        rc, out, err, _ = run_nft(["list", "table", family_name(self.family), table], node_ruleset(self.node))
        if rc != 0:
            raise BackendError(err.strip())
        return out

    def delete_table(self, table: str = TABLE) -> bool:
        """Remove the table if it exists; True if it did."""
        if not self.names("chains", table) and self._missing(table):
            return False
        self.run(f"delete table {family_name(self.family)} {table}\n")
        return True

    def _missing(self, table: str) -> bool:
        from kproxy.nftables.store import node_ruleset

        return node_ruleset(self.node).find(family_name(self.family), table) is None

    def check(self) -> str:
        """The emulated nft has every feature the proxier uses."""
        return ""


class KernelNft:
    """``nft`` on the kernel of this network namespace (or of ``netns``, through ``ip netns exec``)."""

    takes_transactions = True     # ``run`` takes a ``Tx``: a full sync's twin is built without its text
    resync = True                 # full syncs on an existing table repair only what differs

    def __init__(self, family: int = 4, netns: str | None = None, nft: str | None = None) -> None:
        self.family = family
        self.netns = netns
        self.nft = nft or shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin") or "nft"
        self._known_chains: set[str] | None = None     # read by ``names``, kept for the next ``run``
        self.last_repair: str | None = None     # the last full sync's repair text (None: sent in full)

    def _run(self, argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        try:
            return subprocess.run([*prefix, self.nft, *argv], input=stdin, text=True, capture_output=True,
                                  timeout=1800)
        except FileNotFoundError as exc:
            raise BackendError(f"cannot run nft: {exc.strerror}: {exc.filename}") from None

    def run(self, text: str | Tx) -> None:
        """One transaction; a full sync's sent as a repair of what differs when the table exists
        (``kproxy.backends.nft_resync``), else a big one reshaped so the kernel binds its anonymous
        sets cheaply (``kproxy.backends.nft_phases``: a new table in several transactions, its hooks'
        rules in the last, deleted again if one fails), with the same result and the same
        all-or-nothing effect."""
        from kproxy.backends.nft_phases import as_in_text, reshape
        from kproxy.backends.nft_resync import creates_table

        fam = family_name(self.family)
        known, self._known_chains = self._known_chains, None     # good for this transaction only
        # A full sync (the proxier read the chains just before) on an existing table: only what drifted.
        if known is not None and self.resync and creates_table(text) and self._repair(text):
            return
        if not isinstance(text, str):
            text = text.text()
        # Only a full sync (the proxier read the chains just before) is worth reshaping: a partial
        # one is small, and reading the chains would cost more than the kernel's walks.
        shaped = None if known is None else reshape(text, fam, TABLE, lambda: self._chains(known))
        if shaped is None:
            self._apply(text)
            return
        done = 0
        try:
            for part in shaped.parts:
                self._apply(part)
                done += 1
        except BackendError as exc:
            if shaped.fresh and done:       # the table did not exist before: take it away again
                self._run(["delete", "table", fam, TABLE])
            raise BackendError(as_in_text(str(exc), shaped.parts[done], text)) from None

    def _repair(self, tx: str | Tx) -> bool:
        """Send only what the kernel's table lacks of the full transaction ``tx``; False (nothing
        changed) when the table is not there or not readable, the repair cannot be worked out, or
        the kernel refuses it: the full transaction then goes as it is."""
        from kproxy.backends.nft_resync import plan

        fam = family_name(self.family)
        proc = self._run(["list", "table", fam, TABLE])
        if proc.returncode != 0:
            return False
        repair = plan(proc.stdout, tx, fam, TABLE)
        self.last_repair = repair
        if repair is None:
            return False
        if not repair:
            return True
        try:
            self._apply(repair)         # one transaction: the previous rules survive a failure
        except BackendError:
            self.last_repair = None
            return False
        return True

    def _apply(self, text: str) -> None:
        proc = self._run(["-f", "-"], text)
        if proc.returncode != 0:
            raise BackendError(proc.stderr.strip() or f"nft -f failed ({proc.returncode})")

    def _chains(self, known: set[str]) -> set[str] | None:
        """The table's chains as ``names`` just read them, or None when the table does not exist:
        ``create`` in check mode fails only then, and needs no cache (``list tables`` reads every
        set's elements: 25 s at 10,000 Services)."""
        if self._run(["-c", "create", "table", family_name(self.family), TABLE]).returncode == 0:
            return None
        return known

    def names(self, kind: str, table: str = TABLE) -> list[str]:
        fam = family_name(self.family)
        proc = self._run(["-t", "-j", "list", kind, fam])    # terse: no set's elements are read
        if proc.returncode != 0:
            return []
        try:
            items = json.loads(proc.stdout or "{}").get("nftables", [])
        except ValueError:
            return []
        key = "chain" if kind == "chains" else "set"
        out = [i[key]["name"] for i in items if key in i and i[key].get("table") == table]
        if kind == "chains" and table == TABLE:
            self._known_chains = set(out)
        return out

    def list_table(self, table: str = TABLE) -> str:
        proc = self._run(["list", "table", family_name(self.family), table])
        if proc.returncode != 0:
            raise BackendError(proc.stderr.strip())
        return proc.stdout

    def delete_table(self, table: str = TABLE) -> bool:
        fam = family_name(self.family)
        if self._run(["list", "table", fam, table]).returncode != 0:
            return False
        proc = self._run(["delete", "table", fam, table])
        if proc.returncode != 0:
            raise BackendError(proc.stderr.strip())
        return True

    def version(self) -> tuple[int, ...] | None:
        proc = self._run(["--version"])
        words = proc.stdout.replace("v", " ").split()
        for w in words:
            parts = w.split(".")
            if len(parts) >= 2 and all(p.isdigit() for p in parts):
                return tuple(int(p) for p in parts)
        return None

    def check(self) -> str:
        """What this node's nft lacks for the proxier ("" if nothing): its version, then each feature
        tried in a scratch table with ``--check``, so nothing is left behind."""
        try:
            ver = self.version()
        except BackendError as exc:
            return str(exc)
        if ver is None:
            return f"cannot run {self.nft} --version"
        if ver < MIN_NFT:
            return (f"nft {'.'.join(map(str, ver))} is too old for the nftables proxy mode (needs "
                    f"{'.'.join(map(str, MIN_NFT))} or later)")
        fam = family_name(self.family)
        for feature, script in probe_script(self.family, "kproxy-probe"):
            proc = self._run(["-c", "-f", "-"], script)
            if proc.returncode != 0:
                first = (proc.stderr.strip().splitlines() or ["?"])[0]
                return f"this node's nft ({fam}) lacks {feature}: {first}"
        return ""


def nft_backend_for(backend: Any, family: int) -> Any:
    """The nft backend beside an iptables backend (``kproxy.backends``): same node, same namespace."""
    node = getattr(backend, "node", None)
    if node is not None:
        return EmulatedNft(node, family)
    return KernelNft(family, netns=getattr(backend, "netns", None))
