"""Fresh-eyes review of the peer: scenarios that broke it (or could have),
driven through the real CLI against a real directory on loopback.

Time passing is simulated by ageing the records in the peer's SQLite file
while the peer is stopped, never by waiting for the clock.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from support.peers import PASSWORD, peer_cmd, read_json_lines, wait_blocked_on_stdout
from support.processes import test_env

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
    """Bug: inbox seqs are SQLite rowids, which restart at 1 once pruning has
    emptied the table, while the display cursor stays where it was.  New
    messages then sit *below* the cursor: the cursor no longer moves as they
    are shown, and one recorded (and ACKed) but not yet shown when the peer
    dies is never shown at all ("a message recorded but not yet shown when
    the receiver dies is shown when it next starts", SPEC section 4).

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


#: The store's schema before ``seen`` was added (git show 66080ad:src/eurechat/peer/store.py):
#: a data directory written by that version, which an upgrade must take as it is.
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


def test_an_unusable_data_dir_is_reported_as_such_not_as_a_listen_failure(tmp_path):
    """Bug: any OSError from start() was reported as "cannot listen on
    127.0.0.1:0" with exit 6, also when the data directory could not be
    created (here: its parent is a regular file)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    res = subprocess.run(peer_cmd() + ["--user", "alice", "--json", "--data-dir",
                                       str(blocker / "sub"), "--directory", "127.0.0.1:1"],
                         capture_output=True, stdin=subprocess.DEVNULL, timeout=30,
                         env=test_env(EURECHAT_PASSWORD=PASSWORD))
    assert res.returncode == 2, res.stderr
    (line,) = res.stdout.decode().splitlines()
    event = json.loads(line)
    assert set(event) == {"event", "text"} and event["event"] == "error"
    assert "--data-dir" in event["text"] and "listen" not in event["text"]
    assert str(blocker / "sub").encode() in res.stderr


def test_a_text_that_cannot_be_encoded_is_refused_alone_not_with_its_batch(tmp_path):
    """Bug: ``send()`` of a str holding a lone surrogate (``os.fsdecode`` of a
    non-UTF-8 file name gives one) was accepted, then failed the whole group
    commit: every other message of that event-loop turn was refused as a
    "storage failure".  It must be refused on its own, at once."""
    import asyncio

    from eurechat.peer import Peer, PeerError

    async def main():
        async with Peer("alice", data_dir=tmp_path, addresses={"bob": ("127.0.0.1", 1)}) as a:
            errors = []
            a.add_listener(lambda e: e["event"] == "error" and errors.append(e))
            _, good = a.send_nowait("bob", "an innocent message")
            try:
                a.send_nowait("bob", "file \udc80.txt")
            except PeerError as exc:
                assert "\\udc80" in str(exc) or "surrogate" in str(exc)
            else:
                raise AssertionError("a text that is not valid Unicode was accepted")
            msgid = await good
            assert a.pending() == [{"to": "bob", "id": msgid, "text": "an innocent message"}]
            assert errors == []

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_full_directory_is_unavailable_not_a_failed_login(tmp_path):
    """Bug: a directory past ``--max-connections`` answers a new connection
    ``ERR max number of clients reached`` (SPEC section 2); the peer took
    that reply to its LOGIN for a refused password and exited 3 ("wrong
    password?").  A full directory is an unavailable one: the peer starts,
    runs, and logs in once there is room (SPEC section 4)."""
    import socket

    from support.peers import FAST
    from support.processes import run_directory, start_process, useradd

    data = str(tmp_path / "directory")
    useradd(data, "alice", PASSWORD)
    with run_directory("--max-connections", "1", data_dir=data) as d:
        hog = socket.create_connection(d.address, timeout=10)   # takes the only slot
        try:
            hog.sendall(b"PING 0 hog\n")
            assert hog.recv(64) == b"PONG 0 hog\n"      # the directory counts it now
            argv = peer_cmd() + ["--user", "alice", "--json", "--directory", d.hostport,
                                 "--data-dir", str(tmp_path / "alice"), "--log-level", "INFO"]
            alice = start_process(argv, ready=r'"event": "ready"',
                                  env=test_env(EURECHAT_PASSWORD=PASSWORD, **FAST),
                                  stdin=subprocess.PIPE, timeout=30)
        finally:
            hog.close()
        try:
            first = json.loads(alice.lines[0])
            assert first["event"] == "error" and "login" not in first["text"], first
            alice.wait_for_log(r"directory session re-established", timeout=20)
            alice.proc.stdin.write(b"/who\n/quit\n")
            alice.proc.stdin.flush()
            who = alice.wait_for_line(r'"event": "who"')
            assert '"name": "alice"' in who.string
            assert alice.wait(20) == 0
        finally:
            alice.stop()
