"""A data directory written before the ``seen`` table (dedupe records) is
upgraded in place: its outbox is delivered, what it recorded is not shown
again, /pending and /waiting read the old data.  Driven through the real CLI
against a real directory on loopback."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

#: A store without the ``seen`` table: a data directory written by an earlier
#: release, which the store must open as it is.
OLD_SCHEMA = """
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
"""


def _old_data_dir(path: Path, user: str, outbox: list, inbox: list) -> None:
    """A data directory as the previous version left it: WAL database with
    the old schema, and the display cursor after the last inbox row."""
    path.mkdir(parents=True)
    db = sqlite3.connect(str(path / f"peer-{user}.sqlite3"))
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(OLD_SCHEMA)
        with db:
            db.executemany("INSERT INTO outbox(recipient, msgid, text, created) "
                           "VALUES (?,?,?,?)", outbox)
            db.executemany("INSERT INTO inbox(sender, msgid, text, received) VALUES (?,?,?,?)",
                           inbox)
    finally:
        db.close()
    (path / f"peer-{user}.shown").write_bytes(b"%020d\n" % len(inbox))


def test_upgrade_from_the_previous_store_keeps_the_outbox_and_the_dedupe_records(cluster):
    """Data directories written by the version before the ``seen`` table: the
    outbox is delivered, a copy alice already recorded (bob never got her
    ACK) is not shown again, /pending and /waiting work on the old data."""
    t0 = time.time() - 3600
    _old_data_dir(cluster.tmp / "peers" / "alice", "alice",
                  outbox=[("bob", "a-old-1", "queued before the upgrade", t0),
                          ("bob", "a-old-2", "and this one", t0 + 1)],
                  inbox=[("bob", "b-old-1", "bob's first", t0 - 60)])
    _old_data_dir(cluster.tmp / "peers" / "bob", "bob",
                  outbox=[("alice", "b-old-1", "bob's first", t0 - 60),   # ACK lost
                          ("alice", "b-old-2", "bob's second", t0 + 2)],
                  inbox=[])
    # bob's account exists, bob is offline: alice's messages wait.
    assert cluster.peer("bob", env=cluster.env(EURECHAT_RETRY_BASE="60",
                                                EURECHAT_RETRY_MAX="60",
                                                EURECHAT_LOOKUP_INTERVAL="60")).quit() == 0
    # (bob's own queue went nowhere: alice had no account, so no address, yet.)
    alice = cluster.peer("alice", env=cluster.env(EURECHAT_LOOKUP_INTERVAL="60"))
    alice.cmd("/pending", "/waiting")
    assert alice.wait_event("pending")["messages"] == [
        {"to": "bob", "id": "a-old-1", "text": "queued before the upgrade"},
        {"to": "bob", "id": "a-old-2", "text": "and this one"}]
    (w,) = alice.wait_event("waiting")["recipients"]
    assert (w["to"], w["queued"], w["since"]) == ("bob", 2, round(t0, 3))
    bob = cluster.peer("bob", register=False)
    bob.count("message", 2)
    alice.wait_event("message", text="bob's second")
    alice.count("delivered", 2)
    bob.count("delivered", 2)
    assert [(e["id"], e["text"]) for e in bob.events("message")] == [
        ("a-old-1", "queued before the upgrade"), ("a-old-2", "and this one")]
    # The copy alice had recorded under the old version is not shown again.
    assert [e["id"] for e in alice.events("message")] == ["b-old-2"]
    for p in (alice, bob):
        mark = len(p.events())
        p.cmd("/pending")
        assert p.wait_event("pending", start=mark)["messages"] == []
    assert bob.quit() == 0 and alice.quit() == 0
