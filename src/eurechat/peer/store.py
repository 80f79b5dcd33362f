"""The peer's persistent state: outbox, inbox and display cursor, one set per user.

Everything the "no message is lost / shown exactly once" guarantees of SPEC
section 4 rest on lives here:

* ``outbox``: one row per (recipient, message) until that recipient ACKs it.
  Rows are ordered by ``seq`` (the order the sender accepted them), which is
  the per-recipient delivery order.
* ``inbox``: one row per received (sender, msgid), written and committed
  *before* the ACK is sent, so a duplicate (the sender did not see our ACK)
  is recognised across restarts and only ACKed again.  Rows are ordered by
  ``seq``: the display order.
* ``seen``: when this peer last saw each name online (in a directory answer,
  or acknowledging what we sent), so ``/waiting`` can tell a recipient that
  is away from a name that was never seen at all (a typo?).
* the display cursor: the ``seq`` of the last inbox row shown to the user,
  kept in a tiny side file and advanced with one ``pwrite`` next to the
  write of the message to the screen (the order, and its residual window,
  are explained in ``ui.Output.show_messages`` and docs/peer.md).  A row above
  the cursor at start-up was recorded but never shown, so it is shown then.

Retention: the inbox is also the dedupe record, so a row may only go once
its sender can no longer send that message again.  ``prune_inbox`` deletes
shown rows older than a horizon (default 90 days, ``INBOX_RETENTION``), oldest
first and a bounded number per call; why that horizon is safe is in
docs/peer.md ("Inbox retention").

SQLite runs in WAL mode with ``synchronous=FULL``; callers group many
operations into one transaction (``transaction()``), which is what makes a
durable commit per message affordable.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from ..paths import default_data_dir  # noqa: F401 (the Peer's default, shared with the directory)

log = logging.getLogger("eurechat.peer.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq       INTEGER PRIMARY KEY,
    recipient TEXT NOT NULL,
    msgid     TEXT NOT NULL,
    text      TEXT NOT NULL,
    created   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS inbox (
    seq      INTEGER PRIMARY KEY,
    sender   TEXT NOT NULL,
    msgid    TEXT,
    text     TEXT NOT NULL,
    received REAL NOT NULL,
    UNIQUE (sender, msgid)
);
CREATE TABLE IF NOT EXISTS seen (
    name TEXT PRIMARY KEY,
    at   REAL NOT NULL
);
"""


#: Default inbox retention (seconds): a received message's dedupe record is
#: kept this long after it arrived (and at least until it was shown).
INBOX_RETENTION = 90 * 86400.0


class StoreLocked(Exception):
    """Another process already runs a peer for this user on this data directory."""


class OutRow(NamedTuple):
    seq: int
    recipient: str
    msgid: str
    text: str
    created: float   #: ``time.time()`` when the outbox commit accepted it


class InRow(NamedTuple):
    seq: int
    sender: str
    msgid: Optional[str]
    text: str


class PeerStore:
    """SQLite outbox + inbox for one user, plus an exclusive lock on them.

    Not thread-safe: the asyncio peer calls it from its event loop only.
    """

    def __init__(self, data_dir: os.PathLike | str, user: str) -> None:
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"peer-{user}.sqlite3"
        self._lock_fd = os.open(self.dir / f"peer-{user}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise StoreLocked(
                f"another eurechat peer for {user!r} is already running on {self.dir}")
        self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self._cursor_fd = os.open(self.dir / f"peer-{user}.shown", os.O_RDWR | os.O_CREAT, 0o600)
        raw = os.pread(self._cursor_fd, 32, 0).strip(b"\0 \n")
        self.shown = int(raw) if raw.isdigit() else 0
        # The next inbox seq, above every row *and* the display cursor.  Left
        # to SQLite, a rowid restarts at 1 once pruning has emptied the
        # table: new rows would sit below the cursor, and one recorded but
        # not shown when we die would never be shown (nor move the cursor).
        top = self.db.execute("SELECT max(seq) FROM inbox").fetchone()[0] or 0
        self._next_in = max(top, self.shown) + 1
        self._in_tx = False
        self._durable = True

    # -- transactions -------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One commit for everything done inside (group commit).

        ``durable=False`` commits without waiting for the disk (no fsync): for
        batches that only delete acknowledged outbox rows, whose loss in a
        power cut costs a resend that the receiver dedupes, never a message.
        The next durable commit makes them durable too (same WAL)."""
        if durable != self._durable:
            self.db.execute("PRAGMA synchronous=" + ("FULL" if durable else "NORMAL"))
            self._durable = durable
        self.db.execute("BEGIN IMMEDIATE")
        self._in_tx = True
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")
        finally:
            self._in_tx = False

    # -- outbox -------------------------------------------------------------
    def add_outgoing(self, rows: Sequence[Tuple[str, str, str, float]]) -> List[int]:
        """Insert (recipient, msgid, text, created) rows; return their seqs.
        Must run inside ``transaction()``."""
        cur = self.db.cursor()
        seqs = []
        for row in rows:
            cur.execute("INSERT INTO outbox(recipient, msgid, text, created) VALUES (?,?,?,?)",
                        row)
            seqs.append(cur.lastrowid)
        return seqs

    def remove_outgoing(self, seqs: Sequence[int]) -> None:
        self.db.executemany("DELETE FROM outbox WHERE seq=?", [(s,) for s in seqs])

    def load_outbox(self) -> List[OutRow]:
        return [OutRow(*r) for r in self.db.execute(
            "SELECT seq, recipient, msgid, text, created FROM outbox ORDER BY seq")]

    # -- last seen ----------------------------------------------------------
    def note_seen(self, rows: Sequence[Tuple[str, float]]) -> None:
        """Record (name, time) sightings.  Must run inside ``transaction()``."""
        self.db.executemany("INSERT OR REPLACE INTO seen(name, at) VALUES (?,?)", rows)

    def load_seen(self) -> Dict[str, float]:
        return dict(self.db.execute("SELECT name, at FROM seen"))

    # -- inbox --------------------------------------------------------------
    def record_incoming(self, sender: str, msgid: Optional[str], text: str,
                        received: float) -> Optional[int]:
        """Record one message; return its seq, or None if (sender, msgid) is
        already known (a duplicate).  Must run inside ``transaction()``."""
        seq = self._next_in
        cur = self.db.execute(
            "INSERT OR IGNORE INTO inbox(seq, sender, msgid, text, received) VALUES (?,?,?,?,?)",
            (seq, sender, msgid, text, received))
        if cur.rowcount != 1:
            return None
        self._next_in = seq + 1   # (a rolled-back batch leaves a gap: harmless)
        return seq

    def unshown(self) -> List[InRow]:
        """Recorded messages never shown (above the display cursor), in order."""
        return [InRow(*r) for r in self.db.execute(
            "SELECT seq, sender, msgid, text FROM inbox WHERE seq > ? ORDER BY seq",
            (self.shown,))]

    def prune_inbox(self, before: float, limit: int) -> int:
        """Delete at most ``limit`` inbox rows that were shown and received
        before ``before`` (a ``time.time()``); return how many went.

        Rows go in ``seq`` (arrival) order and the walk stops at the first row
        that is too young or not yet shown, so a call reads at most ``limit``
        + 1 rows however large the inbox is, and never scans rows it keeps.
        (A row whose ``received`` is later than its successors', after the
        clock went back, holds those back until it expires too.)  Its own
        transaction, not fsynced: a prune lost in a power cut is redone."""
        if limit <= 0:
            return 0
        last = None
        for seq, received in self.db.execute(
                "SELECT seq, received FROM inbox WHERE seq <= ? ORDER BY seq LIMIT ?",
                (self.shown, limit)):
            if received >= before:
                break
            last = seq
        if last is None:
            return 0
        with self.transaction(durable=False):
            return self.db.execute("DELETE FROM inbox WHERE seq <= ?", (last,)).rowcount

    def inbox_size(self) -> int:
        """Rows in the inbox (shown or not): for tests and diagnostics."""
        return self.db.execute("SELECT count(*) FROM inbox").fetchone()[0]

    def mark_shown(self, seq: int, rewind: bool = False) -> None:
        """Advance the display cursor: one pwrite, next to the screen write.
        ``rewind`` moves it back (a screen write that failed)."""
        if seq > self.shown or (rewind and seq < self.shown):
            self.shown = seq
            os.pwrite(self._cursor_fd, b"%020d\n" % seq, 0)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.db.close()
        for fd in (self._cursor_fd, self._lock_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
