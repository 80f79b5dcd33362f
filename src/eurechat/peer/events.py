"""What the peer tells its user: received messages and the ``--json`` events.

Events are plain dicts, exactly what ``--json`` prints one per line (SPEC
section 4 names ``ready``, ``queued``, ``delivered``, ``message`` and
``error``; ``unreachable`` is for humans, and programs may watch it).  The
constructors here are the one place each event's fields are spelled.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Tuple

#: One event: what ``Peer.events()`` yields and ``--json`` prints.
Event = Dict[str, Any]


class IncomingMessage(NamedTuple):
    """A message received and durably recorded; ``msgid`` None from seed peers."""

    sender: str
    msgid: Optional[str]
    text: str
    seq: int
    #: it came over a link whose sender the certificate proves (SPEC §5.4);
    #: False over plaintext, and for one recorded in an earlier run
    verified: bool = False


def ready(user: str, address: Tuple[str, int]) -> Event:
    """Listening and (if there is a directory) logged in."""
    return {"event": "ready", "user": user, "listen": f"{address[0]}:{address[1]}"}


def queued(to: str, msgid: str) -> Event:
    """The message is durably in the outbox for ``to``."""
    return {"event": "queued", "to": to, "id": msgid}


def delivered(to: str, msgid: str) -> Event:
    """``to`` recorded the message and its outbox row is gone."""
    return {"event": "delivered", "to": to, "id": msgid}


def message(m: IncomingMessage) -> Event:
    """A message received (and recorded)."""
    return {"event": "message", "from": m.sender, "id": m.msgid, "text": m.text,
            "verified": m.verified}


def keychange(name: str, old: str, new: str) -> Event:
    """``name`` shows a key other than the one pinned for it (SPEC §5.4)."""
    return {"event": "keychange", "name": name, "old": old, "new": new}


def verify(name: str, number: str, own: str, theirs: str) -> Event:
    """The safety number of this user's key and ``name``'s, to compare aloud."""
    return {"event": "verify", "name": name, "number": number, "own": own, "theirs": theirs}


def error(text: str) -> Event:
    """Something the user should know went wrong (storage, directory)."""
    return {"event": "error", "text": text}


def unreachable(to: str, queued: int, reason: str, last_seen: Optional[float]) -> Event:
    """``to`` cannot be reached now; its messages stay queued."""
    return {"event": "unreachable", "to": to, "queued": queued, "reason": reason,
            "last_seen": last_seen}


__all__ = ["Event", "IncomingMessage", "ready", "queued", "delivered", "message", "error",
           "unreachable", "keychange", "verify"]
