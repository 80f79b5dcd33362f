"""The per-recipient outbox on its own: the window, ACK matching, what goes
again on a new connection, and message ids.  No sockets, no clock."""

from __future__ import annotations

from eurechat.peer.outbox import MsgIds, Outbox, OutItem, new_msgid
from eurechat.peer.protocol import encode_message


def item(seq: int, text: str = "") -> OutItem:
    msgid = f"m{seq}"
    return OutItem(seq, msgid, encode_message("alice", msgid, text or f"text {seq}"), 1000.0 + seq)


def filled(n: int, window: int = 10) -> Outbox:
    box = Outbox(window)
    for seq in range(1, n + 1):
        box.enqueue(item(seq))
    return box


def frames(*seqs: int) -> bytes:
    return b"".join(item(s).frame for s in seqs)


class TestTheWindow:
    def test_an_empty_outbox_sends_nothing(self):
        box = Outbox(4)
        assert box.take() is None and not box and len(box) == 0

    def test_sends_at_most_window_unacknowledged_in_seq_order(self):
        box = filled(6, window=4)
        assert box.take() == frames(1, 2, 3, 4)
        assert box.sent == 4
        assert box.take() is None   # the window is full

    def test_new_messages_go_out_while_the_window_has_room(self):
        box = filled(2, window=4)
        assert box.take() == frames(1, 2)
        box.enqueue(item(3))
        assert box.take() == frames(3)

    def test_an_ack_of_the_oldest_opens_the_window(self):
        box = filled(6, window=4)
        box.take()
        done = box.ack("m1")
        assert [i.seq for i in done] == [1]
        assert box.sent == 3
        assert box.take() == frames(5)

    def test_a_window_of_one_sends_one_at_a_time(self):
        box = filled(3, window=1)
        assert box.take() == frames(1)
        assert box.take() is None
        box.ack("m1")
        assert box.take() == frames(2)


class TestAckMatching:
    def test_an_ack_names_the_message_it_acknowledges(self):
        box = filled(3)
        box.take()
        assert [i.msgid for i in box.ack("m1")] == ["m1"]
        assert [i.msgid for i in box.unacked()] == ["m2", "m3"]

    def test_an_ack_out_of_order_waits_for_the_ones_before_it(self):
        box = filled(3)
        box.take()
        assert box.ack("m2") == []          # matched, but m1 still heads the queue
        assert len(box) == 3 and [i.msgid for i in box.unacked()] == ["m1", "m3"]
        assert [i.seq for i in box.ack("m1")] == [1, 2]
        assert len(box) == 1 and box.sent == 1

    def test_a_duplicate_or_unknown_ack_matches_nothing(self):
        box = filled(2)
        box.take()
        assert box.ack("m1") is not None
        assert box.ack("m1") is None
        assert box.ack("nope") is None
        assert len(box) == 1

    def test_a_bare_ack_acknowledges_the_oldest_sent_unacknowledged(self):
        box = filled(3)
        box.take()
        box.ack("m2")
        assert [i.seq for i in box.ack(None)] == [1, 2]
        assert [i.seq for i in box.ack(None)] == [3]

    def test_a_bare_ack_with_nothing_sent_matches_nothing(self):
        box = filled(2)
        assert box.ack(None) is None          # nothing went out yet
        box.take()
        box.ack(None)
        box.ack(None)
        assert box.ack(None) is None          # all acknowledged
        assert not box

    def test_a_bare_ack_never_acknowledges_what_was_not_sent(self):
        box = filled(3, window=1)
        box.take()
        assert [i.seq for i in box.ack(None)] == [1]
        assert box.ack(None) is None          # m2 is queued but not sent


class TestANewConnection:
    def test_everything_unacknowledged_goes_again_oldest_first(self):
        box = filled(4)
        box.take()
        box.ack("m1")
        box.ack("m3")
        box.restart()
        assert box.sent == 0
        assert box.take() == frames(2, 4)    # m3 is acknowledged: not again

    def test_after_a_restart_an_ack_still_matches(self):
        box = filled(2)
        box.take()
        box.restart()
        box.take()
        assert [i.seq for i in box.ack("m2") + box.ack("m1")] == [1, 2]


class TestItems:
    def test_the_text_is_read_back_from_the_frame(self):
        it = OutItem(7, "x7", encode_message("alice", "x7", "héllo\nworld"), 5.0)
        assert it.text == "héllo\nworld" and not it.acked and it.created == 5.0
        assert "x7" in repr(it)

    def test_an_acknowledged_item_says_so(self):
        box = filled(2)
        box.take()
        first = box.queue[0]
        box.ack("m2")
        assert "acked" in repr(box.queue[1]) and "acked" not in repr(first)


class TestMsgIds:
    def test_ids_are_unique_and_share_the_process_prefix(self):
        ids = MsgIds()
        got = [ids() for _ in range(1000)]
        assert len(set(got)) == 1000
        assert all(i.startswith(ids.prefix) for i in got)

    def test_two_starts_draw_different_prefixes(self):
        assert MsgIds().prefix != MsgIds().prefix

    def test_ids_are_valid_wire_arguments(self):
        # They travel in MESSAGE and ACK headers.
        encode_message("alice", new_msgid(), "x")
