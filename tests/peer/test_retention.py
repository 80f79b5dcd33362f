"""Inbox retention: the dedupe records of received messages are pruned after
a horizon, never before they were shown, a bounded number per pass, at
start-up and periodically.  Real SQLite files through the real code, and
the CLI option end to end."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from eurechat.framing import Decoder, Message
from eurechat.peer import Peer, Timings
from eurechat.peer.store import PeerStore
from support.peers import peer_cmd, read_json_lines, wait_blocked_on_stdout
from support.processes import test_env


def inbox_rows(path: Path) -> list:
    """The inbox as another process sees it (read-only; the peer may be running)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT sender, msgid, text FROM inbox ORDER BY seq").fetchall()
    finally:
        db.close()


def test_prune_is_bounded_oldest_first_and_spares_unshown_and_young_rows(tmp_path):
    now = time.time()
    store = PeerStore(tmp_path, "bob")
    with store.transaction():
        seqs = [store.record_incoming("alice", f"old{i}", f"old {i}", now - 1000 + i)
                for i in range(5)]
        store.record_incoming("alice", "young", "young", now)
        late_old = store.record_incoming("alice", "late-old", "old but after a young one",
                                         now - 2000)
        unshown = store.record_incoming("alice", "unshown", "never shown", now - 3000)
    store.mark_shown(late_old)   # everything but the last row reached the screen
    before = now - 100
    # Bounded: at most `limit` rows per call, oldest (by arrival) first.
    assert store.prune_inbox(before, 2) == 2
    assert store.prune_inbox(before, 2) == 2
    assert store.prune_inbox(before, 2) == 1          # stops at the young row
    assert store.prune_inbox(before, 1000) == 0       # ... and does not walk past it
    store.close()
    # The file says so, as another process reads it.
    assert [r[1] for r in inbox_rows(store.path)] == ["young", "late-old", "unshown"]

    store = PeerStore(tmp_path, "bob")
    with store.transaction():
        # A kept record still recognises a resent copy; a pruned one no
        # longer does (which is why the horizon is long: docs/peer.md).
        assert store.record_incoming("alice", "young", "young", now) is None
        assert store.record_incoming("alice", "old0", "old 0", now) is not None
    # Once the young row is old enough, the walk goes on, but never past the
    # display cursor: a row recorded and not yet shown is never pruned.
    assert store.prune_inbox(now + 1, 1000) == 2
    assert [r[1] for r in inbox_rows(store.path)] == ["unshown", "old0"]
    assert store.unshown()[0].seq == unshown and seqs[0] < unshown
    store.close()


class Pruned(logging.Handler):
    """Counts the records the peer says it pruned (its INFO log line)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.total = 0
        self.passes = []
        self.when = []   # time.time() of each pass that pruned something
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        m = re.match(r"pruned (\d+) inbox record", record.getMessage())
        if m:
            self.passes.append(int(m.group(1)))
            self.when.append(record.created)
            self.total += int(m.group(1))
            self.changed.set()

    async def reach(self, n: int, timeout: float = 20.0) -> None:
        async def wait():
            while self.total < n:
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), timeout)


def test_peer_prunes_at_start_then_a_backlog_in_bounded_passes_then_new_arrivals(tmp_path):
    """An old inbox (25 shown records from long ago): start-up prunes one
    batch before anything else happens, the backlog goes in further passes of
    at most one batch, and then messages received while running are pruned
    once they are older than the retention."""
    now = time.time()
    store = PeerStore(tmp_path, "bob")
    with store.transaction():
        last = [store.record_incoming("alice", f"m{i}", "x", now - 3600) for i in range(25)][-1]
    store.mark_shown(last)
    store.close()

    async def main():
        handler = Pruned()
        logger = logging.getLogger("eurechat.peer.node")
        old_level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        got = []
        b = Peer("bob", data_dir=tmp_path, on_message=got.append, inbox_retention=1.0,
                 timings=Timings(prune_batch=10, prune_interval=0.05))
        try:
            await b.start()
            assert handler.passes == [10]            # the start-up pass, bounded
            await handler.reach(25)
            assert max(handler.passes) == 10 and b.store.inbox_size() == 0
            # A message received now is recorded, shown, and kept until it
            # is older than the retention (1 s), then pruned.
            r, w = await asyncio.open_connection(*b.address)
            sent = time.time()   # bob records it (its "received") after this
            w.write(b"MESSAGE 5 zed id1\nhello")
            assert Decoder().feed(await r.read(100)) == [Message("ACK", ("id1",))]
            assert [m.text for m in got] == ["hello"]
            await handler.reach(26)
            # Not before its time: the pass that pruned it ran at least the
            # retention after it was received (a consequence of the cut-off,
            # not a speed: a slower machine only makes it later).
            assert handler.when[-1] - sent >= 1.0
            assert b.store.inbox_size() == 0
            w.close()
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
            await b.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_retention_zero_keeps_everything(tmp_path):
    now = time.time()
    store = PeerStore(tmp_path, "bob")
    with store.transaction():
        seq = store.record_incoming("alice", "m", "x", now - 10 ** 9)
    store.mark_shown(seq)
    store.close()

    async def main():
        b = Peer("bob", data_dir=tmp_path, inbox_retention=0,
                 timings=Timings(prune_interval=0.01))
        await b.start()
        assert b.prune_inbox() == 0 and b.store.inbox_size() == 1
        await b.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_cli_inbox_retention_prunes_what_bob_received(cluster):
    """End to end: bob runs with ``--inbox-retention 1s``; what alice sends is
    shown, then its record is pruned from bob's SQLite file a second later."""
    alice = cluster.peer("alice")
    bob = cluster.peer("bob", "--inbox-retention", "1s", "--log-level", "INFO",
                       env=cluster.env(EURECHAT_PRUNE_INTERVAL="0.05"))
    alice.cmd("/msg bob one", "/msg bob two", "/msg bob three")
    bob.count("message", 3)
    alice.count("delivered", 3)
    db = cluster.tmp / "peers" / "bob" / "peer-bob.sqlite3"
    assert wait_pruned(bob.p, 3) == 3
    assert inbox_rows(db) == []
    assert [e["text"] for e in bob.events("message")] == ["one", "two", "three"]
    assert bob.quit() == 0 and alice.quit() == 0


PRUNED = re.compile(r"pruned (\d+) inbox record")


def wait_pruned(p, n: int, timeout: float = 20.0) -> int:
    """Wait until the peer's log says it pruned ``n`` records in all; the total."""
    deadline = time.monotonic() + timeout
    with p._cond:
        while True:
            total = sum(int(m.group(1)) for m in map(PRUNED.search, p.err_lines) if m)
            left = deadline - time.monotonic()
            if total >= n or left <= 0 or p._err_eof:
                break
            p._cond.wait(left)
    assert total >= n, f"pruned {total} of {n}\n--- stderr ---\n{p.stderr()[-3000:]}"
    return total


def test_cli_rejects_a_bad_retention():
    res = subprocess.run(peer_cmd() + ["--user", "bob", "--inbox-retention", "5x"],
                         capture_output=True, env=test_env(), timeout=30)
    assert res.returncode == 2
    assert b"--inbox-retention" in res.stderr and b"90d" in res.stderr


DAY = 86400


def _db(cluster, name: str) -> Path:
    return cluster.tmp / "peers" / name / f"peer-{name}.sqlite3"


def _age_inbox(path: Path, seconds: float) -> None:
    """Make every inbox record look ``seconds`` older (the peer is stopped)."""
    db = sqlite3.connect(str(path))
    try:
        with db:
            db.execute("UPDATE inbox SET received = received - ?", (seconds,))
    finally:
        db.close()


def _inbox_size(path: Path) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM inbox").fetchone()[0]
    finally:
        db.close()


def test_a_fully_pruned_inbox_does_not_hide_messages_recorded_before_a_kill(cluster):
    """The store numbers inbox rows itself: left to SQLite, a rowid restarts
    at 1 once pruning has emptied the table while the display cursor stays
    where it was, so new messages would sit *below* the cursor and one
    recorded (and ACKed) but not yet shown when the peer dies would never be
    shown ("a message recorded but not yet shown when the receiver dies is
    shown when it next starts", SPEC section 4).

    bob shows 60 messages, 100 days pass (the records are aged in his file),
    his next start prunes them all; then his stdout fills up while messages
    arrive, he is killed, and at his next start every one of them must be
    shown exactly once."""
    k, n = 60, 50
    alice = cluster.peer("alice")
    bob = cluster.peer("bob")
    alice.cmd(*[f"/msg bob early{i}" for i in range(k)])
    bob.count("message", k)
    assert bob.quit() == 0
    db = _db(cluster, "bob")
    _age_inbox(db, 100 * DAY)

    r, w = os.pipe()
    argv = peer_cmd() + ["--user", "bob", "--json", "--directory", cluster.hostport,
                         "--data-dir", str(db.parent)]
    bob = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=w, stderr=subprocess.DEVNULL,
                           env=cluster.env(), start_new_session=True)
    os.close(w)
    try:
        first = b""
        while b"\n" not in first:
            chunk = os.read(r, 1)       # only the ready line: the rest stays in the pipe
            assert chunk, "bob exited before it was ready"
            first += chunk
        assert json.loads(first)["event"] == "ready"
        assert _inbox_size(db) == 0     # the start-up pass pruned the 100-day-old records
        pad = "x" * 2000                # 50 lines of 2 KB: more than a pipe holds
        alice.cmd(*[f"/msg bob late{i} {pad}" for i in range(n)])
        alice.count("queued", k + n)
        wait_blocked_on_stdout(bob.pid)
        os.killpg(bob.pid, signal.SIGKILL)
        bob.wait(10)
        seen = [e["text"].split()[0] for e in read_json_lines(r, whole_lines=False) if e["event"] == "message"]
    finally:
        if bob.poll() is None:
            os.killpg(bob.pid, signal.SIGKILL)
            bob.wait(10)
        os.close(r)
    assert 0 < len(seen) < n
    recorded = _inbox_size(db)
    assert recorded > len(seen), "the scenario needs messages recorded but not shown"

    bob2 = cluster.peer("bob", register=False)
    alice.cmd("/msg bob end")
    bob2.wait_event("message", text="end")
    shown = seen + [e["text"].split()[0] for e in bob2.events("message")]
    assert shown == [f"late{i}" for i in range(n)] + ["end"]
    alice.count("delivered", k + n + 1)
    assert bob2.quit() == 0 and alice.quit() == 0
