"""A message to a name that has no account stays queued (nothing acknowledged
is ever dropped), but visibly: ``/waiting`` (and, for humans, ``/pending``)
says per recipient how long it has waited and when it was last seen online.
Real directory, real peer processes."""

from __future__ import annotations

import re
import subprocess
import time

from support.peers import peer_cmd
from support.processes import start_process

WAITING_KEYS = {"to", "queued", "since", "waited", "last_seen", "connected"}


def waiting(peer) -> list:
    mark = len(peer.events())
    peer.cmd("/waiting")
    return peer.wait_event("waiting", start=mark)["recipients"]


def test_waiting_tells_an_absent_user_from_a_name_never_seen_across_a_restart(cluster):
    alice = cluster.peer("alice")
    bob = cluster.peer("bob")
    alice.cmd("/msg bob hello")
    alice.wait_event("delivered", to="bob")
    assert bob.quit() == 0
    alice.cmd("/msg bob are you there?")
    first = alice.wait_event("queued", to="bob", start=len(alice.events()) - 1)
    alice.cmd("/msg zoe hi zoe")             # zoe: no such account
    alice.wait_event("queued", to="zoe")
    t0 = time.time() + 0.001   # times are given to the millisecond, rounded
    rs = waiting(alice)
    assert [r["to"] for r in rs] == ["bob", "zoe"]      # longest waiting first
    assert all(set(r) == WAITING_KEYS for r in rs)
    b, z = rs
    assert b["queued"] == 1 and z["queued"] == 1
    assert b["last_seen"] is not None and b["last_seen"] <= t0   # seen while online
    assert z["last_seen"] is None                                # never
    assert b["since"] <= z["since"] <= t0 and b["waited"] >= 0
    # /pending in JSON keeps exactly the SPEC's shape.
    alice.cmd("/pending")
    assert alice.wait_event("pending")["messages"] == [
        {"to": "bob", "id": first["id"], "text": "are you there?"},
        {"to": "zoe", "id": alice.events("queued")[-1]["id"], "text": "hi zoe"}]
    # Nothing is dropped, and what /waiting knows survives a restart: when
    # the messages were queued, and that bob was seen and zoe never was.
    assert alice.quit() == 0
    alice = cluster.peer("alice", register=False)
    rs2 = waiting(alice)
    assert [(r["to"], r["queued"], r["since"]) for r in rs2] == \
        [(r["to"], r["queued"], r["since"]) for r in rs]
    assert rs2[0]["last_seen"] == b["last_seen"] and rs2[1]["last_seen"] is None
    # zoe registers: her message is delivered, and she no longer waits.
    zoe = cluster.peer("zoe")
    zoe.wait_event("message", text="hi zoe")
    alice.wait_event("delivered", to="zoe")
    assert [r["to"] for r in waiting(alice)] == ["bob"]
    assert zoe.quit() == 0 and alice.quit() == 0


def test_text_mode_pending_and_the_unreachable_notice_say_never_seen(cluster):
    """For humans (no --json): the notice when the message cannot go, and
    /pending grouped per recipient with how long and seen when."""
    argv = peer_cmd() + ["--user", "alice", "--directory", cluster.hostport, "--register",
                         "--data-dir", str(cluster.tmp / "peers" / "alice")]
    p = start_process(argv, ready=r"^\* you are alice", env=cluster.env(),
                      stdin=subprocess.PIPE, timeout=30)
    cluster.procs.append(p)
    p.proc.stdin.write(b"/msg zoe hi zoe\n")
    p.proc.stdin.flush()
    p.wait_for_line(re.escape("(zoe is not listed by the directory and was never seen online "
                              "by this peer: is the name right? 1 message(s) queued"))
    p.proc.stdin.write(b"/pending\n/waiting\n")
    p.proc.stdin.flush()
    head = p.wait_for_line(r"^\* to zoe: 1 message\(s\) waiting for \d+ s; not listed by the "
                           r"directory, and never seen online by this peer: is the name right\?")
    i = p.lines.index(head.string)
    assert re.fullmatch(r"    \[\S+\] hi zoe", p.lines[i + 1]), p.lines[i:]
    p.wait_for_line(r"^\* to zoe: 1 message\(s\) waiting for", start=i + 2)   # /waiting
    p.proc.stdin.close()
    assert p.proc.wait(30) == 0
