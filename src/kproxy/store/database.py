"""The node file as an SQLite database (format 2): atomic commits, one writer, readers never blocked.

Rows, each with a generation number bumped on every write:

- ``part``: the node's description and clock (``node``), ``conntrack``, ``ipsets``, ``ipvs`` and
  ``recent``, each a JSON document;
- ``ipt_table``: one per iptables table and family: its chains in order with policy and counters,
  and how many rules jump to each chain (so a commit need not read every chain to count them);
- ``ipt_chain``: one per chain: its rules as save lines with counters, and their extensions' state.

A command reads the parts and the table rows (small), and a chain's rules only when it touches
the chain; a commit writes only the rows whose content changed. WAL mode lets readers keep their
snapshot while a writer works; SQLite's journal makes a commit all-or-nothing even under kill -9.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kproxy.iptables.model import STANDARD_VERDICTS, Chain, Table
from kproxy.node import Node
from kproxy.store.chains import StoredChain, chain_text, gc_paused
from kproxy.store.jsonfile import node_from_parts, node_parts
from kproxy.store.lock import NodeFileError, Wait

FORMAT_VERSION = 2
APPLICATION_ID = 0x6B707278          # "kprx" in the database header: this is a kproxy node file
SQLITE_MAGIC = b"SQLite format 3\x00"
PAUSE_ENV = "KPROXY_STORE_PAUSE"     # tests: a file to create, then sleep, just before a commit
SCHEMA = {
    "part": "CREATE TABLE part (name TEXT PRIMARY KEY, generation INTEGER NOT NULL, body TEXT NOT NULL)",
    "ipt_table": "CREATE TABLE ipt_table (family INTEGER NOT NULL, name TEXT NOT NULL, "
                 "generation INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (family, name))",
    "ipt_chain": "CREATE TABLE ipt_chain (family INTEGER NOT NULL, tbl TEXT NOT NULL, name TEXT NOT NULL, "
                 "generation INTEGER NOT NULL, rules TEXT NOT NULL, state TEXT, PRIMARY KEY (family, tbl, name))",
}
COLUMNS = {"part": ["name", "generation", "body"],
           "ipt_table": ["family", "name", "generation", "body"],
           "ipt_chain": ["family", "tbl", "name", "generation", "rules", "state"]}


ChainRow = tuple[str, "str | None"]


@dataclass
class TableBook:
    """What the file holds for one table, as this process last read or wrote it: the table row, its
    reference counts, the chain objects that row describes, and the chain rows known (read or written)."""

    body: str
    refs: dict[str, int]
    chains: dict[str, Chain]
    rows: dict[str, ChainRow] = field(default_factory=dict)


def stored_refs(t: Table) -> dict[str, int]:
    """Jumps per user chain (standard verdicts are no chains: counting them would rewrite the table's
    row with every ``-j ACCEPT``), and, under ``""``, the conntrack and set references the rules hold
    (``Table.use_counts``): what a commit needs without reading any chain."""
    refs = {k: v for k, v in t.jump_counts().items() if v and k not in STANDARD_VERDICTS}
    uses = {k: v for k, v in t.use_counts().items() if v}
    return {**refs, **{f"\0{k}": v for k, v in uses.items()}}


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def check_header(path: Path, head: bytes, size: int) -> None:
    """Catch a truncated database before SQLite does (it would only fail on the page it misses)."""
    if len(head) < 100:
        raise NodeFileError(f"{path}: damaged node database: truncated ({size} bytes, shorter than its header)")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    if head[24:28] == head[92:96] and pages and size < pages * page_size:
        raise NodeFileError(f"{path}: damaged node database: truncated ({size} of {pages * page_size} bytes)")


def connect(path: Path) -> sqlite3.Connection:
    """An existing database, opened without ever creating one (``mode=rw``); transactions are explicit."""
    conn = sqlite3.connect(f"file:{quote(str(path))}?mode=rw", uri=True, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")     # with WAL: a crash loses at most the last commit
    return conn


def check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """The file must be a kproxy node database of a format this version reads."""
    app = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app != APPLICATION_ID:
        raise NodeFileError(f"{path}: not a kproxy node file (an SQLite database of another application)")
    if version > FORMAT_VERSION:
        raise NodeFileError(f"{path}: node file format version {version} is newer than this kproxy reads "
                            f"({FORMAT_VERSION}); upgrade kproxy")
    if version != FORMAT_VERSION:
        raise NodeFileError(f"{path}: unknown node file format version {version}")
    for table, columns in COLUMNS.items():
        got = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        if got != columns:
            what = "missing" if not got else f"has columns {', '.join(got)}"
            raise NodeFileError(f"{path}: damaged node database: table {table} {what}")


def begin(conn: sqlite3.Connection, write: bool, wait: Wait) -> None:
    """Start the command's transaction: the write lock for a writer, a snapshot for a reader."""
    if not write:
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()   # the snapshot starts with a first read
        return

    def try_once() -> bool:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False
            raise
        return True

    if wait.seconds is None:
        conn.execute(f"PRAGMA busy_timeout = {2**31 - 1}")
        conn.execute("BEGIN IMMEDIATE")
        return
    conn.execute(f"PRAGMA busy_timeout = {int(wait.seconds * 1000)}")   # SQLite waits as flock would
    if not try_once():
        raise wait.busy()


class NodeDatabase:
    """An open node database: loads the node lazily and writes back what changed."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn
        # What the file holds, as far as this process knows (read, or written by it): part bodies,
        # and per table its row and each chain's object with its row (None: a row never read).
        self.parts: dict[str, str] = {}
        # each part's JSON value as loaded or last written: the nft ruleset's part handed back as that
        # very object (``ruleset_to_json`` of a ruleset no command changed) is not printed again. (Other
        # parts' loaders may keep and change what they were given: theirs are always printed.)
        self.values: dict[str, Any] = {}
        self.tables: dict[tuple[int, str], TableBook] = {}
        self._next: tuple[dict[str, str], dict[tuple[int, str], TableBook]] | None = None
        self._next_values: dict[str, Any] = {}

    def damaged(self, exc: Exception) -> NodeFileError:
        return NodeFileError(f"{self.path}: damaged node database ({exc})")

    # ---- reading ------------------------------------------------------------------------------
    def load(self) -> Node:
        """The node, with its iptables chains left unread until used."""
        with gc_paused():
            return self._load()

    def _load(self) -> Node:
        try:
            rows = [(_text(name), _text(body)) for name, body in self.conn.execute("SELECT name, body FROM part")]
            self.parts = dict(rows)
            parts = {name: json.loads(body) for name, body in rows}
            self.values = dict(parts)
            node = node_from_parts(parts, str(self.path))
            tables = [(family, _text(name), _text(body)) for family, name, body in
                      self.conn.execute("SELECT family, name, body FROM ipt_table ORDER BY family, name")]
        except sqlite3.DatabaseError as exc:
            raise self.damaged(exc) from None
        except ValueError as exc:
            raise NodeFileError(f"{self.path}: damaged node database: a part is not JSON ({exc})") from None
        by_family: dict[int, dict[str, Table]] = {}
        for family, name, body in tables:
            if family not in node.iptables:
                raise NodeFileError(f"{self.path}: damaged node database: iptables family {family}")
            by_family.setdefault(family, {})[name] = self._table(family, name, body)
        for family, loaded in by_family.items():
            node.iptables[family].commit(loaded)
        from kproxy.nftables.xtlayout import load_layout

        load_layout(node, parts.get("iptables-nft"))
        return node

    def _table(self, family: int, name: str, body: str) -> Table:
        source = TableRows(self, family, name)
        try:
            data = json.loads(body)
            t = Table(name, family)
            t.chains = {cname: StoredChain(cname, policy, packets, nbytes, source)
                        for cname, policy, packets, nbytes in data["chains"]}
            refs = data["refs"]
            if not isinstance(refs, dict) or not all(type(v) is int for v in refs.values()):
                raise TypeError("reference counts must be integers")
            t.refs = {k: v for k, v in refs.items() if not k.startswith("\0")}
            t.uses = {k[1:]: v for k, v in refs.items() if k.startswith("\0")}
        except (ValueError, KeyError, TypeError) as exc:
            raise NodeFileError(f"{self.path}: damaged node database: table {name}: {exc}") from None
        self.tables[(family, name)] = TableBook(body, refs, dict(t.chains))
        return t

    def chain_row(self, family: int, table: str, chain: str) -> tuple[str, str | None]:
        """A chain's row as stored (its rules unparsed)."""
        try:
            row = self.conn.execute("SELECT rules, state FROM ipt_chain WHERE family = ? AND tbl = ? AND name = ?",
                                    (family, _db(table), _db(chain))).fetchone()
        except sqlite3.DatabaseError as exc:
            raise self.damaged(exc) from None
        if row is None:
            raise TableRows(self, family, table).error(chain, "no rules row")
        return _text(row[0]), _py(row[1])

    def table_rows(self, family: int, table: str) -> dict[str, tuple[str, str | None]]:
        """Every chain row of a table, in one query."""
        try:
            rows = self.conn.execute("SELECT name, rules, state FROM ipt_chain WHERE family = ? AND tbl = ?",
                                     (family, _db(table))).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self.damaged(exc) from None
        return {_text(name): (_text(rules), _py(state)) for name, rules, state in rows}

    # ---- writing ------------------------------------------------------------------------------
    def commit(self, node: Node, wait: Wait | None = None) -> int:
        """Write the rows that changed and commit; returns how many rows were written.

        A session may commit again (the proxy after each sync): it then takes the lock anew."""
        try:
            if not self.conn.in_transaction:
                begin(self.conn, True, wait or Wait())
            with gc_paused():
                n = self._write(node)
            pause = os.environ.get(PAUSE_ENV)
            if pause:
                Path(pause).write_text(str(os.getpid()))
                time.sleep(3600)
            self.conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise self.damaged(exc) from None
        assert self._next is not None
        self.parts, self.tables = self._next
        self.values = self._next_values
        self._next = None
        return n

    def replace(self, node: Node, wait: Wait | None = None) -> int:
        """Write the whole node in place of whatever the file held, and commit."""
        if not self.conn.in_transaction:
            begin(self.conn, True, wait or Wait())
        self.conn.execute("DELETE FROM part")
        self.conn.execute("DELETE FROM ipt_table")
        self.conn.execute("DELETE FROM ipt_chain")
        self.parts, self.tables, self.values = {}, {}, {}
        return self.commit(node)

    def _write(self, node: Node) -> int:
        n = 0
        ex = self.conn.execute
        parts: dict[str, str] = {}
        values = node_parts(node)
        for name, value in values.items():
            kept = name == "nftables" and self.values.get(name) is value and name in self.parts
            body = parts[name] = self.parts[name] if kept else _compact(value)
            if self.parts.get(name) != body:
                ex("INSERT INTO part VALUES (?, 1, ?) ON CONFLICT (name) DO UPDATE "
                   "SET generation = generation + 1, body = excluded.body", (_db(name), _db(body)))
                n += 1
        tables: dict[tuple[int, str], TableBook] = {}
        for family, state in node.iptables.items():
            for t in state.tables.values():
                n += self._write_table(family, t, tables)
        for family, name in set(self.tables) - set(tables):
            ex("DELETE FROM ipt_table WHERE family = ? AND name = ?", (family, _db(name)))
            ex("DELETE FROM ipt_chain WHERE family = ? AND tbl = ?", (family, _db(name)))
            n += 1
        self._next = (parts, tables)
        self._next_values = values
        return n

    def _write_table(self, family: int, t: Table, books: dict[tuple[int, str], TableBook]) -> int:
        """The table's row if its chain list changed, and the rows of the chains whose rules did.

        Only chains that are new objects or were read are looked at: a chain never read is the
        object loaded, unchanged. On a table of 30,000 chains this is what keeps a one-rule change cheap.
        """
        old = self.tables.get((family, t.name))
        old_chains = old.chains if old is not None else {}
        examined = [n for n, c in t.chains.items() if c is not old_chains.get(n) or getattr(c, "_source", None) is None]
        refs = stored_refs(t)
        body = old.body if old is not None else ""
        if old is None or refs != old.refs or list(t.chains) != list(old_chains) or \
                any(_head_changed(t.chains[n], old_chains.get(n)) for n in examined):
            body = _compact({"chains": [[c.name, c.policy, c.packets, c.bytes] for c in t.chains.values()],
                             "refs": refs})
        n = 0
        if old is None or body != old.body:
            self.conn.execute("INSERT INTO ipt_table VALUES (?, ?, 1, ?) ON CONFLICT (family, name) DO UPDATE "
                              "SET generation = generation + 1, body = excluded.body", (family, _db(t.name), _db(body)))
            n += 1
        rows = dict(old.rows) if old is not None else {}
        changed = []
        for name in examined:
            chain = t.chains[name]
            if isinstance(chain, StoredChain) and chain.pending:
                row = chain.stored_row()
            else:
                row = chain_text(chain)
            prev = old_chains.get(name)
            before = rows.get(name) or (prev.row if isinstance(prev, StoredChain) else None)
            if prev is None or before != row:
                changed.append((family, _db(t.name), _db(name), _db(row[0]), _db(row[1])))
            rows[name] = row
        self.conn.executemany("INSERT INTO ipt_chain VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (family, tbl, name) "
                              "DO UPDATE SET generation = generation + 1, rules = excluded.rules, "
                              "state = excluded.state", changed)
        gone = [name for name in old_chains.keys() - t.chains.keys()]
        self.conn.executemany("DELETE FROM ipt_chain WHERE family = ? AND tbl = ? AND name = ?",
                              [(family, _db(t.name), _db(name)) for name in gone])
        for name in gone:
            rows.pop(name, None)
        books[(family, t.name)] = TableBook(body, refs, dict(t.chains), rows)
        return n + len(changed) + len(gone)


def _head_changed(chain: Chain, prev: Chain | None) -> bool:
    """Whether a chain's policy or counters may differ from its entry in the table row. A chain read
    (not pending) may have counted packets in place, so only an unread predecessor is trusted."""
    if prev is None or not (isinstance(prev, StoredChain) and prev.pending) or prev is chain:
        return True
    return (chain.policy, chain.packets, chain.bytes) != (prev.policy, prev.packets, prev.bytes)


class TableRows:
    """The chain rows of one table, fetched one by one, or all at once when many are asked for
    (iptables-save, -L of the whole table): one query instead of thousands."""

    BULK_AFTER = 64

    def __init__(self, db: NodeDatabase, family: int, table: str) -> None:
        self.db, self.family, self.table = db, family, table
        self.fetched = 0
        self.cache: dict[str, tuple[str, str | None]] | None = None

    def row(self, name: str) -> tuple[str, str | None]:
        if self.cache is None:
            self.fetched += 1
            if self.fetched <= self.BULK_AFTER:
                return self.db.chain_row(self.family, self.table, name)
            self.cache = self.db.table_rows(self.family, self.table)
        row = self.cache.get(name)
        if row is None:
            raise self.error(name, "no rules row")
        return row

    def error(self, name: str, why: str) -> NodeFileError:
        tool = "ip6tables" if self.family == 6 else "iptables"
        return NodeFileError(f"{self.db.path}: damaged node database: {tool} table {self.table} chain {name}: {why}")


def create(path: Path, node: Node, replace: bool) -> NodeDatabase:
    """Write ``node`` as a new database at ``path``: built beside it, then linked (or renamed) into place;
    returns it open, knowing what it holds.

    Without ``replace`` an existing file wins (FileExistsError): a writer that raced another one to
    create the node runs its command again on what the other wrote.
    """
    fd, tmp = tempfile.mkstemp(prefix=".kproxy-node-", suffix=".tmp", dir=str(path.resolve().parent))
    os.close(fd)
    try:
        conn = connect(Path(tmp))
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
            conn.execute("BEGIN IMMEDIATE")
            for sql in SCHEMA.values():
                conn.execute(sql)
            built = NodeDatabase(Path(tmp), conn)
            built.commit(node)
        finally:
            conn.close()
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    db = NodeDatabase(path, connect(path))     # what was written, for a later commit of the same node
    db.parts, db.tables, db.values = built.parts, built.tables, built.values
    return db


def _db(text: str | None) -> str | bytes | None:
    """A string as SQLite can take it: text, or (when it carries bytes that were not UTF-8, kept as
    surrogates, as in a comment from a binary restore) the raw bytes."""
    if text is None or text.isascii():      # (isascii: no copy, where encode would copy 15 MB of rules)
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")
    return text


def _py(value: str | bytes | None) -> str | None:
    """A stored value back as a string (raw bytes as surrogates, as they came in)."""
    if value is None or isinstance(value, str):
        return value
    return bytes(value).decode("utf-8", "surrogateescape")


def _text(value: str | bytes) -> str:
    """``_py`` for a column that is never NULL."""
    return value if isinstance(value, str) else bytes(value).decode("utf-8", "surrogateescape")
