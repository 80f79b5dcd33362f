"""Pins, key changes and safety numbers between enrolled peers (SPEC §5.4,
§5.5), through the real CLI: ``keychange``, ``--strict-keys`` until
``/trust``, ``/verify`` the same on both sides."""

from __future__ import annotations

from eurechat.peer.events import keychange
from eurechat.peer.ui import Output
from support.enrol import enrol
from support.peers import PASSWORD


def test_a_changed_key_is_told_and_held_until_trusted(cluster):
    data = {n: cluster.tmp / "peers" / n for n in ("alice", "bob")}
    enrol(cluster.directory, data["alice"], "alice", PASSWORD)
    old = enrol(cluster.directory, data["bob"], "bob", PASSWORD)
    alice = cluster.peer("alice", "--strict-keys", register=False)
    bob = cluster.peer("bob", register=False)
    alice.cmd("/msg bob first")
    bob.wait_event("message", text="first")
    alice.wait_event("delivered", to="bob")
    assert alice.events("keychange") == []
    assert bob.quit() == 0
    new = enrol(cluster.directory, data["bob"], "bob", PASSWORD, register=False, reset=True)
    bob = cluster.peer("bob", register=False)
    alice.cmd("/msg bob second")
    change = alice.wait_event("keychange", timeout=20)
    assert change == {"event": "keychange", "name": "bob", "old": old, "new": new}
    held = alice.wait_event("error", timeout=20)
    assert "held" in held["text"] and "/trust bob" in held["text"]
    # bob is online and reachable, yet nothing went: a barrier message from
    # him to alice makes sure he would have had it by now.
    bob.cmd("/msg alice barrier")
    alice.wait_event("message", text="barrier")
    assert [e["text"] for e in bob.events("message")] == []
    assert len(alice.events("delivered")) == 1
    alice.cmd("/trust bob")
    bob.wait_event("message", text="second", timeout=20)
    alice.count("delivered", 2)
    assert [e["text"] for e in bob.events("message")] == ["second"]
    assert len(alice.events("keychange")) == 1


def test_verify_gives_the_same_number_on_both_sides(cluster):
    fps = {n: enrol(cluster.directory, cluster.tmp / "peers" / n, n, PASSWORD)
           for n in ("alice", "bob")}
    alice = cluster.peer("alice", register=False)
    bob = cluster.peer("bob", register=False)
    alice.cmd("/verify bob")
    bob.cmd("/verify alice")
    a, b = alice.wait_event("verify"), bob.wait_event("verify")
    assert a["number"] == b["number"] and len(a["number"].replace(" ", "")) == 60
    assert (a["name"], a["own"], a["theirs"]) == ("bob", fps["alice"], fps["bob"])
    assert (b["name"], b["own"], b["theirs"]) == ("alice", fps["bob"], fps["alice"])


def test_the_terminal_shows_a_key_change_as_a_warning():
    line = Output(json_mode=False).render(keychange("bob", "sha256:old", "sha256:new"))
    assert "WARNING" in line and "sha256:old" in line and "sha256:new" in line
    assert "/trust bob" in line
