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

from peer_helpers import peer_cmd

BLOCKED_ON_STDOUT = ("pipe_write", "poll_schedule_timeout")
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


def _wait_blocked_on_stdout(pid: int, timeout: float = 30.0) -> None:
    """Wait until the process sleeps writing to (or waiting for room in) its
    stdout pipe, as the kernel reports it in /proc."""
    deadline = time.monotonic() + timeout
    wchan = ""
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/wchan") as f:
            wchan = f.read()
        if any(w in wchan for w in BLOCKED_ON_STDOUT):
            return
        time.sleep(0.01)   # polling the kernel's view of an event we cannot be told about
    raise AssertionError(f"the peer never blocked on its stdout (wchan {wchan!r})")


def _drain(fd: int) -> list:
    data = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return [json.loads(line) for line in data.splitlines()]


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
        _wait_blocked_on_stdout(bob.pid)
        os.killpg(bob.pid, signal.SIGKILL)
        bob.wait(10)
        seen = [e["text"].split()[0] for e in _drain(r) if e["event"] == "message"]
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
