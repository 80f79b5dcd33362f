"""The outbox of one recipient: message ids, the send window, ACK matching
and what goes again after a reconnect.

A recipient's unacknowledged messages wait here in ``seq`` order (the order
the sender accepted them).  They go out pipelined, at most ``window``
unacknowledged at a time, over the one connection the pair shares.  An ACK
names the message it acknowledges (a seed peer's bare ``ACK 0`` means the
oldest one sent and not yet acknowledged); the acknowledged head of the
queue leaves, which opens the window.  On a new connection everything
unacknowledged goes again, oldest first, before anything newer: the
receiver drops duplicates, so it records each message once and in order.

Sans-IO: items and ACKs in, frames to write and items done out.  Which
connection may acknowledge is the route's rule (``route.Route.on_ack``).
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from typing import Deque, Dict, Iterator, List, Optional


class MsgIds:
    """Message ids: a random 72-bit prefix per process start plus a counter.

    Unique without coordination (the receiver dedupes on (sender, msgid), so
    an id only has to be unique per sender), and far cheaper than drawing
    fresh random bytes for every message."""

    def __init__(self) -> None:
        self.prefix = secrets.token_urlsafe(9)
        self.n = itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.n):x}"


#: The process's message ids.
new_msgid = MsgIds()


class OutItem:
    """One (recipient, message) of the outbox, held until the recipient ACKs it.

    Only the wire frame is kept (shared by all recipients of one message);
    the text is decoded from it when ``/pending`` asks, so a large outbox
    costs its bytes once, not twice."""

    __slots__ = ("seq", "msgid", "frame", "acked", "created")

    def __init__(self, seq: int, msgid: str, frame: bytes, created: float) -> None:
        self.seq = seq
        self.msgid = msgid
        self.frame = frame
        self.acked = False
        self.created = created   # time.time() of the outbox commit (persisted)

    @property
    def text(self) -> str:
        return self.frame[self.frame.index(b"\n") + 1:].decode("utf-8")

    def __repr__(self) -> str:
        return f"<OutItem {self.seq} {self.msgid}{' acked' if self.acked else ''}>"


class Outbox:
    """One recipient's queue, in ``seq`` order, until each item is acknowledged."""

    __slots__ = ("queue", "by_id", "sent", "window")

    def __init__(self, window: int) -> None:
        self.queue: Deque[OutItem] = deque()   #: in seq order, until acked
        self.by_id: Dict[str, OutItem] = {}    #: the unacknowledged ones by msgid
        #: ``queue[:sent]`` went out on the current connection
        self.sent = 0
        self.window = window

    def __len__(self) -> int:
        return len(self.queue)

    def __bool__(self) -> bool:
        return bool(self.queue)

    def enqueue(self, item: OutItem) -> None:
        self.queue.append(item)
        self.by_id[item.msgid] = item

    def restart(self) -> None:
        """A new connection (or none): everything unacknowledged goes again."""
        self.sent = 0

    def take(self) -> Optional[bytes]:
        """The frames the window lets out now, joined (None: nothing to send).
        They count as sent on the current connection from here on."""
        queue = self.queue
        limit = min(len(queue), self.window)
        if self.sent >= limit:
            return None
        frames = []
        i = self.sent
        while i < limit:
            item = queue[i]
            if not item.acked:
                frames.append(item.frame)
            i += 1
        self.sent = limit
        return b"".join(frames) if frames else None

    def ack(self, msgid: Optional[str]) -> Optional[List[OutItem]]:
        """The recipient acknowledged ``msgid`` (None: a seed peer's bare
        ``ACK 0``, the oldest sent and not yet acknowledged).  Returns the
        items that leave the head of the queue now (maybe none: an ACK out
        of order waits for the ones before it), or None if the ACK matches
        nothing (a duplicate: we sent it twice)."""
        if msgid is None:
            queue = self.queue
            item = next((queue[i] for i in range(min(self.sent, len(queue)))
                         if not queue[i].acked), None)
            if item is None:
                return None
            self.by_id.pop(item.msgid, None)
        else:
            item = self.by_id.pop(msgid, None)
            if item is None:
                return None
        item.acked = True
        queue = self.queue
        done = []
        while queue and queue[0].acked:
            done.append(queue.popleft())
            if self.sent:
                self.sent -= 1
        return done

    def unacked(self) -> Iterator[OutItem]:
        """The items still waiting for their ACK, oldest first."""
        return (item for item in self.queue if not item.acked)


__all__ = ["MsgIds", "new_msgid", "OutItem", "Outbox"]
