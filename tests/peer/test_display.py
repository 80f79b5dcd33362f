""""Shown exactly once" where stdout is the hard part: a reader that falls behind.

The receiver records a message, ACKs it, then shows it and advances its
display cursor.  When whoever reads its stdout stops reading, the pipe fills
and the peer waits for room.  A ``kill -9`` at that moment must not lose the
display of anything: what was not written is shown at the next start, what
was written is not shown again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

from support.peers import peer_cmd, read_json_lines, wait_blocked_on_stdout


def test_kill_while_stdout_is_full_loses_no_display_and_repeats_none(cluster):
    n = 200
    alice = cluster.peer("alice", "--log-level", "INFO")
    cluster.peer("bob").quit()     # bob's account exists; bob is offline
    r, w = os.pipe()
    argv = peer_cmd() + ["--user", "bob", "--json", "--directory", cluster.hostport,
                         "--data-dir", str(cluster.tmp / "peers" / "bob")]
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
        pad = "x" * 1000                # 200 lines of 1 KB: far more than a pipe holds
        alice.cmd(*[f"/msg bob m{i} {pad}" for i in range(n)])
        alice.count("queued", n)
        wait_blocked_on_stdout(bob.pid)
        os.killpg(bob.pid, signal.SIGKILL)
        bob.wait(10)
        seen = [e for e in read_json_lines(r) if e["event"] == "message"]
    finally:
        if bob.poll() is None:
            os.killpg(bob.pid, signal.SIGKILL)
            bob.wait(10)
        os.close(r)
    assert 0 < len(seen) < n
    bob2 = cluster.peer("bob", register=False)
    try:
        rest = bob2.count("message", n - len(seen), timeout=60)
    except AssertionError as exc:       # say what alice was doing (see the report)
        alice.cmd("/pending")
        pending = alice.wait_event("pending")["messages"]
        raise AssertionError(f"{exc}\n--- alice: {len(pending)} pending, first "
                             f"{pending[:1]!r:.200}; log tail ---\n"
                             f"{alice.p.stderr()[-4000:]}") from None
    shown = [e["text"].split()[0] for e in seen + rest]
    assert len(shown) == len(set(shown)), "a message was shown twice"
    assert shown == [f"m{i}" for i in range(n)]
    alice.count("delivered", n)
