"""The group commit on its own: what waits, what one transaction writes,
what follows once it is durable, and what a failure undoes.  A small
in-memory store stands in for SQLite."""

from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Tuple

import pytest

from eurechat.peer import commit
from eurechat.peer.events import IncomingMessage
from eurechat.peer.outbox import OutItem
from eurechat.peer.protocol import encode_ack, encode_message


class MemoryStore:
    """Seqs from 1; an inbox that knows (sender, msgid); a transaction that
    applies everything or, if ``fail`` is set, nothing."""

    def __init__(self) -> None:
        self.seq = 0
        self.outbox: Dict[int, Tuple[str, str, str, float]] = {}
        self.inbox: Dict[Tuple[str, Optional[str]], int] = {}
        self.seen: Dict[str, float] = {}
        self.durable: List[bool] = []
        self.fail: Optional[Exception] = None

    @contextlib.contextmanager
    def transaction(self, durable: bool = True):
        saved = (self.seq, dict(self.outbox), dict(self.inbox), dict(self.seen))
        self.durable.append(durable)
        try:
            yield None
            if self.fail is not None:
                raise self.fail
        except BaseException:
            self.seq, self.outbox, self.inbox, self.seen = saved
            raise

    def add_outgoing(self, rows):
        seqs = []
        for row in rows:
            self.seq += 1
            self.outbox[self.seq] = row
            seqs.append(self.seq)
        return seqs

    def remove_outgoing(self, seqs):
        for s in seqs:
            del self.outbox[s]

    def note_seen(self, rows):
        self.seen.update(rows)

    def record_incoming(self, sender, msgid, text, received):
        if msgid is not None and (sender, msgid) in self.inbox:
            return None
        self.seq += 1
        self.inbox[(sender, msgid)] = self.seq
        return self.seq


class Done:
    """Stands in for the future ``send`` waits on."""


class TestPending:
    def test_take_hands_over_everything_and_starts_afresh(self):
        p = commit.Pending()
        p.out.append(("m1", "hi", ["bob"], Done()))
        p.inc.append(("conn", "bob", "b1", "yo"))
        batch = p.take({"bob": 1.0})
        assert (len(batch.out), len(batch.inc), batch.seen) == (1, 1, {"bob": 1.0})
        assert not batch.empty
        assert commit.Pending().take({}).empty
        assert (p.out, p.inc, p.dels) == ([], [], [])

    def test_deletions_not_written_go_first_next_time(self):
        p = commit.Pending()
        old = OutItem(1, "m1", b"", 0.0)
        new = OutItem(2, "m2", b"", 0.0)
        p.dels.append(("bob", old))
        batch = p.take({})
        p.dels.append(("bob", new))
        p.not_written(batch)
        assert [i.seq for _, i in p.dels] == [1, 2]


class TestWrite:
    def test_one_transaction_writes_the_whole_batch(self):
        store = MemoryStore()
        store.add_outgoing([("bob", "m0", "old", 0.0)])          # seq 1
        gone = OutItem(1, "m0", b"", 0.0)
        batch = commit.Batch([("m1", "hi", ["bob", "carol"], Done())],
                             [("c", "dan", "d1", "yo"), ("c", "dan", "d1", "yo")],
                             [("bob", gone)], {"bob": 5.0})
        written = commit.write(batch, store, now=100.0)
        assert written.out_seqs == [[2, 3]]
        assert written.in_seqs == [4, None]                     # the repeat is a duplicate
        assert set(store.outbox) == {2, 3} and store.seen == {"bob": 5.0}
        assert store.durable == [True]

    def test_deletions_and_sightings_alone_do_not_wait_for_the_disk(self):
        store = MemoryStore()
        store.add_outgoing([("bob", "m0", "x", 0.0)])
        commit.write(commit.Batch([], [], [("bob", OutItem(1, "m0", b"", 0.0))], {}),
                     store, 1.0)
        commit.write(commit.Batch([], [], [], {"bob": 1.0}), store, 1.0)
        assert store.durable == [False, False]

    def test_a_failed_transaction_writes_nothing_and_raises(self):
        store = MemoryStore()
        store.fail = OSError("disk full")
        with pytest.raises(OSError):
            commit.write(commit.Batch([("m1", "hi", ["bob"], Done())], [], [], {}), store, 1.0)
        assert store.outbox == {} and store.seq == 0


class TestOutcome:
    def test_acks_per_connection_in_arrival_order_duplicates_too(self):
        batch = commit.Batch([], [("c1", "dan", "d1", "a"), ("c2", "eve", "e1", "b"),
                                  ("c1", "dan", "d2", "c"), ("c1", "dan", "d1", "a")], [], {})
        out = commit.outcome(batch, commit.Written([], [10, 11, 12, None]), "alice", 0.0)
        assert out.acks == {"c1": encode_ack("d1") + encode_ack("d2") + encode_ack("d1"),
                            "c2": encode_ack("e1")}
        assert list(out.acks) == ["c1", "c2"]

    def test_only_new_messages_are_shown_in_order(self):
        batch = commit.Batch([], [("c", "dan", "d1", "a"), ("c", "dan", "d1", "a"),
                                  ("c", "dan", None, "seed")], [], {})
        out = commit.outcome(batch, commit.Written([], [7, None, 8]), "alice", 0.0)
        assert out.shown == [IncomingMessage("dan", "d1", "a", 7),
                             IncomingMessage("dan", None, "seed", 8)]
        assert out.acks == {"c": encode_ack("d1") * 2 + encode_ack(None)}

    def test_accepted_messages_become_one_item_per_recipient_sharing_one_frame(self):
        done = Done()
        batch = commit.Batch([("m1", "hi", ["bob", "carol"], done)], [], [], {})
        out = commit.outcome(batch, commit.Written([[4, 5]], []), "alice", 99.0)
        assert out.committed == [(done, "m1")]
        assert [(name, it.seq, it.msgid, it.created) for name, it in out.queued] == [
            ("bob", 4, "m1", 99.0), ("carol", 5, "m1", 99.0)]
        assert out.queued[0][1].frame == encode_message("alice", "m1", "hi")
        assert out.queued[0][1].frame is out.queued[1][1].frame

    def test_deletions_written_are_delivered(self):
        gone = OutItem(1, "m0", b"", 0.0)
        out = commit.outcome(commit.Batch([], [], [("bob", gone)], {}),
                             commit.Written([], []), "alice", 0.0)
        assert out.delivered == [("bob", gone)]
        assert (out.acks, out.queued, out.committed, out.shown) == ({}, [], [], [])


class TestFailure:
    def test_senders_hear_of_it_and_the_connections_that_brought_messages_close(self):
        d1, d2 = Done(), Done()
        batch = commit.Batch([("m1", "x", ["bob"], d1), ("m2", "y", ["bob"], d2)],
                             [("c1", "dan", "d1", "a"), ("c2", "eve", "e1", "b"),
                              ("c1", "dan", "d2", "c")], [], {})
        failed = commit.failure(batch)
        assert failed.done == [d1, d2]
        assert failed.close == ["c1", "c2"]
