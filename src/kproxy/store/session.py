"""One command's use of a node file: open it to read or to write, load the node, commit or not.

A node file is one of three things: absent (a fresh default node; a reader leaves it absent, a
writer creates it at commit), an old JSON node file (format 1: read whole; a writer holds an flock
on it and rewrites it as a database at commit), or a node database (format 2).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from kproxy.node import Node
from kproxy.store import database
from kproxy.store.jsonfile import read_json_node
from kproxy.store.lock import FOREVER, LockBusy, NodeFileError, Wait, acquire


class Retry(Exception):
    """Another command created the node file while this one ran on a fresh node: run it again."""


class NodeSession:
    """The node of one command, read (a consistent snapshot) or written (holding the write lock)."""

    def __init__(self, path: str | os.PathLike[str], write: bool = True, wait: Wait = FOREVER) -> None:
        self.path = Path(path)
        self.write = write
        self.wait = wait
        self.kind = ""                           # "absent", "json" or "database" once opened
        self._node: Node | None = None
        self._db: database.NodeDatabase | None = None
        self._flock: int | None = None

    @property
    def node(self) -> Node:
        if self._node is None:
            self._node = self._open()
        return self._node

    @node.setter
    def node(self, node: Node) -> None:
        """Replace the whole node (``node init``, ``node import``): the commit rewrites everything."""
        if self._node is None and self.write:
            self._open()
        self._node = node
        self.kind = "replaced:" + self.kind.removeprefix("replaced:")

    def _open(self) -> Node:
        while True:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                self.kind = "absent"
                return Node.default()
            except OSError as exc:
                raise NodeFileError(f"{self.path}: {exc.strerror}") from None
            try:
                head = os.pread(fd, 100, 0)
                size = os.fstat(fd).st_size
                if head.lstrip()[:1] == b"{":
                    node = self._open_json(fd)
                    if node is not None:
                        if self._flock == fd:
                            fd = -1             # kept open: it holds the flock until the commit
                        return node
                    continue                    # rewritten as a database while we waited: again
            finally:
                if fd >= 0:
                    os.close(fd)
            # Only now, with our descriptor closed: closing any descriptor of a file drops the
            # process's POSIX locks on it, SQLite's included.
            if head.startswith(database.SQLITE_MAGIC):
                return self._open_database(head, size)
            what = "empty file" if not size else "neither a node database nor a JSON node file"
            raise NodeFileError(f"{self.path}: not a kproxy node file ({what})")

    def _open_database(self, head: bytes, size: int) -> Node:
        database.check_header(self.path, head, size)
        conn = None
        try:
            conn = database.connect(self.path)
            database.begin(conn, self.write, self.wait)
            database.check_schema(conn, self.path)
        except (database.sqlite3.DatabaseError, NodeFileError, LockBusy) as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, database.sqlite3.DatabaseError):
                raise NodeFileError(f"{self.path}: damaged node database ({exc})") from None
            raise
        self.kind = "database"
        self._db = database.NodeDatabase(self.path, conn)
        return self._db.load()

    def _open_json(self, fd: int) -> Node | None:
        """The node of a JSON node file; a writer first takes its flock (None: the file was replaced)."""
        if self.write:
            acquire(lambda: _try_flock(fd), self.wait, lambda: fcntl.flock(fd, fcntl.LOCK_EX))
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                return None
        with os.fdopen(os.dup(fd)) as fh:
            fh.seek(0)
            text = fh.read()
        node = read_json_node(self.path, text)
        self.kind = "json"
        if self.write:
            self._flock = fd
        return node

    def commit(self) -> None:
        """Persist the node (a writer's success); the session stays usable for another commit.

        Raises Retry when a fresh node lost the race to create the file."""
        if self._node is None:
            return
        if not self.write:
            raise RuntimeError("a read-only session cannot commit")
        replacing = self.kind.startswith("replaced:")
        kind = self.kind.removeprefix("replaced:")
        if kind == "database":
            assert self._db is not None
            if replacing:
                self._db.replace(self._node, self.wait)
            else:
                self._db.commit(self._node, self.wait)
        else:
            try:
                # JSON: migrated on its first write (under its flock); absent: created, or lost the race.
                db = database.create(self.path, self._node, replace=kind == "json")
            except FileExistsError:
                raise Retry() from None
            if self._flock is not None:
                os.close(self._flock)
                self._flock = None
            self._db = db
        self.kind = "database"

    def close(self) -> None:
        """End the session without writing (a reader's end, or a failed command's)."""
        if self._db is not None:
            self._db.conn.close()
            self._db = None
        if self._flock is not None:
            os.close(self._flock)
            self._flock = None


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def load_node(path: str | os.PathLike[str]) -> Node:
    """The node saved at ``path`` (all of it, read-only), or a fresh default node when there is none."""
    session = NodeSession(path, write=False)
    try:
        node = session.node
        for state in node.iptables.values():
            for t in state.tables.values():
                for c in t.chains.values():
                    _ = c.rules    # read now: the database closes below
        return node
    finally:
        session.close()


def save_node(node: Node, path: str | os.PathLike[str]) -> None:
    """Write ``node`` as the whole content of the node file at ``path`` (waiting for the write lock)."""
    session = NodeSession(path, write=True)
    session.node = node
    try:
        session.commit()
    except Retry:
        save_node(node, path)
    finally:
        session.close()

