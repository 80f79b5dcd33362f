"""The group commit: what waits for the next one, what it writes, and what
follows once it is durable.

Everything the peer must make durable (messages accepted by ``send``,
messages received, outbox rows whose ACK came, sightings) waits in
``Pending`` until the next turn of the event loop; then one SQLite
transaction writes it all (``write``).  Only after that commit does anything
leave the process or reach the user (``outcome``):

1. received messages are ACKed, per connection, in arrival order (a
   duplicate is ACKed again, not shown);
2. accepted messages become outbox items, one per recipient (``queued``),
   and ``send`` learns its msgid;
3. messages whose outbox rows are gone are ``delivered``;
4. what was received and is new is shown.

If the transaction fails nothing of the batch counts (``failure``): the
accepted messages fail to their senders, the connections that brought the
received ones are closed unacknowledged (their senders send it all again
on reconnecting), and the deletions and sightings wait for the next commit.

Sans-IO: the store is passed in; connections and futures are opaque here.
"""

from __future__ import annotations

from typing import (
    Any,
    ContextManager,
    Dict,
    Hashable,
    List,
    NamedTuple,
    Optional,
    Protocol,
    Sequence,
    Tuple,
)

from .events import IncomingMessage
from .outbox import OutItem
from .protocol import ack_frame, message_frame

#: ``send`` accepted ``text`` for ``names`` as ``msgid``; ``done`` learns the outcome.
Accepted = Tuple[str, str, List[str], Any]
#: ``conn`` brought ``text`` from ``sender`` as ``msgid``.
Received = Tuple[Hashable, str, Optional[str], str]
#: ``name`` acknowledged ``item``: its outbox row goes.
Acked = Tuple[str, OutItem]


class Store(Protocol):
    """What a commit needs of the peer's store (``store.PeerStore``)."""

    def transaction(self, durable: bool = True) -> ContextManager[Any]: ...
    def remove_outgoing(self, seqs: Sequence[int]) -> None: ...
    def note_seen(self, rows: Sequence[Tuple[str, float]]) -> None: ...
    def add_outgoing(self, rows: Sequence[Tuple[str, str, str, float]]) -> List[int]: ...
    def record_incoming(self, sender: str, msgid: Optional[str], text: str,
                        received: float) -> Optional[int]: ...


class Batch(NamedTuple):
    """One commit's worth."""

    out: List[Accepted]
    inc: List[Received]
    dels: List[Acked]
    seen: Dict[str, float]

    @property
    def empty(self) -> bool:
        return not (self.out or self.inc or self.dels or self.seen)


class Pending:
    """What the next commit writes (sightings excepted: ``addresses.Sightings``)."""

    __slots__ = ("out", "inc", "dels")

    def __init__(self) -> None:
        self.out: List[Accepted] = []
        self.inc: List[Received] = []
        self.dels: List[Acked] = []

    def take(self, seen: Dict[str, float]) -> Batch:
        """The batch for the commit about to run; pending starts afresh."""
        batch = Batch(self.out, self.inc, self.dels, seen)
        self.out, self.inc, self.dels = [], [], []
        return batch

    def not_written(self, batch: Batch) -> None:
        """``batch`` failed: its deletions go first in the next commit."""
        self.dels[:0] = batch.dels


class Written(NamedTuple):
    """What the store assigned: per accepted message the seqs of its
    outbox rows (one per recipient), per received one its inbox seq (None:
    a duplicate)."""

    out_seqs: List[List[int]]
    in_seqs: List[Optional[int]]


def write(batch: Batch, store: Store, now: float) -> Written:
    """Write ``batch`` in one transaction (with an fsync if it holds
    messages; deletions and sightings alone can wait for the disk).  Raises
    whatever the store raises; then nothing of it was written."""
    out_seqs: List[List[int]] = []
    in_seqs: List[Optional[int]] = []
    with store.transaction(durable=bool(batch.out or batch.inc)):
        if batch.dels:
            store.remove_outgoing([item.seq for _, item in batch.dels])
        if batch.seen:
            store.note_seen(list(batch.seen.items()))
        for msgid, text, names, _done in batch.out:
            out_seqs.append(store.add_outgoing([(n, msgid, text, now) for n in names]))
        record = store.record_incoming
        for _conn, sender, msgid, text in batch.inc:
            in_seqs.append(record(sender, msgid, text, now))
    return Written(out_seqs, in_seqs)


class Outcome(NamedTuple):
    """What to do, in this order, once a batch is durable."""

    acks: Dict[Hashable, bytes]           #: per connection, its ACK frames in arrival order
    queued: List[Tuple[str, OutItem]]     #: (recipient, item): hand to its route, say ``queued``
    committed: List[Tuple[Any, str]]      #: (what ``send`` waits on, msgid): resolve it
    delivered: List[Acked]                #: say ``delivered``
    shown: List[IncomingMessage]          #: new messages to show, in order


def outcome(batch: Batch, written: Written, user: str, now: float) -> Outcome:
    """What follows from the commit of ``batch`` (sent by ``user`` at ``now``)."""
    acks: Dict[Hashable, List[bytes]] = {}
    shown: List[IncomingMessage] = []
    for (conn, sender, msgid, text), seq in zip(batch.inc, written.in_seqs):
        frames = acks.get(conn)
        if frames is None:
            frames = acks[conn] = []
        frames.append(ack_frame(msgid))
        if seq is not None:
            shown.append(IncomingMessage(sender, msgid, text, seq,
                                         getattr(conn, "verified", False)))
    queued: List[Tuple[str, OutItem]] = []
    committed: List[Tuple[Any, str]] = []
    for (msgid, text, names, done), seqs in zip(batch.out, written.out_seqs):
        frame = message_frame(user, msgid, text)   # one frame, shared by the recipients
        for name, seq in zip(names, seqs):
            queued.append((name, OutItem(seq, msgid, frame, now)))
        committed.append((done, msgid))
    return Outcome({conn: b"".join(frames) for conn, frames in acks.items()}, queued,
                   committed, batch.dels, shown)


class Failure(NamedTuple):
    """What to undo when a batch could not be written."""

    done: List[Any]           #: fail these ``send`` waits
    close: List[Hashable]     #: close these connections, unacknowledged


def failure(batch: Batch) -> Failure:
    """Nothing of ``batch`` counts: who must hear of it.  (The deletions
    and sightings go back to pending: ``Pending.not_written``,
    ``Sightings.not_written``.)"""
    close = list(dict.fromkeys(conn for conn, _s, _m, _t in batch.inc))
    return Failure([done for _m, _t, _n, done in batch.out], close)


__all__ = ["Pending", "Batch", "Store", "Written", "write", "Outcome", "outcome",
           "Failure", "failure"]
