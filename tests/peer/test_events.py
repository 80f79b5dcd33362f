"""The events' fields, as ``--json`` prints them (SPEC sections 4 and 5.5)."""

from __future__ import annotations

from eurechat.peer import events
from eurechat.peer.events import IncomingMessage


class TestEventFields:
    def test_each_event_spells_its_fields(self):
        assert events.ready("alice", ("127.0.0.1", 5000)) == {
            "event": "ready", "user": "alice", "listen": "127.0.0.1:5000"}
        assert events.queued("bob", "m1") == {"event": "queued", "to": "bob", "id": "m1"}
        assert events.delivered("bob", "m1") == {"event": "delivered", "to": "bob", "id": "m1"}
        assert events.message(IncomingMessage("bob", "b1", "hi", 3)) == {
            "event": "message", "from": "bob", "id": "b1", "text": "hi", "verified": False}
        assert events.message(IncomingMessage("bob", "b1", "hi", 3, True))["verified"] is True
        assert events.keychange("bob", "sha256:a", "sha256:b") == {
            "event": "keychange", "name": "bob", "old": "sha256:a", "new": "sha256:b"}
        assert events.verify("bob", "12345", "sha256:a", "sha256:b") == {
            "event": "verify", "name": "bob", "number": "12345", "own": "sha256:a",
            "theirs": "sha256:b"}
        assert events.error("disk full") == {"event": "error", "text": "disk full"}
        assert events.unreachable("bob", 2, "not online", None) == {
            "event": "unreachable", "to": "bob", "queued": 2, "reason": "not online",
            "last_seen": None}
