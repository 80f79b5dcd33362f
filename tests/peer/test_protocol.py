"""The sans-IO peer connection: bytes in, events out, whatever the chunking;
and the frames it writes are ``Message``'s encoding, the bytes of SPEC
section 4, with nothing invalid getting out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eurechat.message import Message
from eurechat.peer.protocol import (
    AckReceived,
    ErrReceived,
    MessageReceived,
    PeerProtocol,
    PingReceived,
    PongReceived,
    Violation,
    ack_frame,
    encode_ack,
    encode_err,
    encode_message,
    encode_ping,
    encode_pong,
    message_frame,
    valid_name,
)

STREAM = (encode_message("alice", "m1", "héllo") + encode_message("alice", None, "seed")
          + encode_ack("x9") + encode_ack(None) + encode_ping("n") + encode_ping(None)
          + encode_pong("n") + b"ERR 4\nnope")
EXPECTED = [MessageReceived("alice", "m1", "héllo"), MessageReceived("alice", None, "seed"),
            AckReceived("x9"), AckReceived(None), PingReceived("n"), PingReceived(None),
            PongReceived("n"), ErrReceived("nope")]


def test_encoders_emit_the_spec_bytes():
    assert encode_message("alice", "id7", "Hello world!") == b"MESSAGE 12 alice id7\nHello world!"
    assert encode_message("sender", None, "Hello world!") == b"MESSAGE 12 sender\nHello world!"
    assert encode_ack("id7") == b"ACK 0 id7\n"
    assert encode_ack(None) == b"ACK 0\n"
    assert encode_ping("tok") == b"PING 0 tok\n"
    assert encode_pong(None) == b"PONG 0\n"


def test_events_in_stream_order():
    p = PeerProtocol()
    assert p.receive(STREAM) == EXPECTED
    assert p.remote == "alice"


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_chunking_does_not_matter(cuts):
    p = PeerProtocol()
    events = []
    prev = 0
    for cut in sorted(cuts) + [len(STREAM)]:
        events.extend(p.receive(STREAM[prev:cut]))
        prev = cut
    assert events == EXPECTED


def test_one_connection_speaks_for_one_sender():
    p = PeerProtocol()
    events = p.receive(encode_message("alice", "1", "a") + encode_message("mallory", "2", "b")
                       + encode_message("alice", "3", "c"))
    assert events[0] == MessageReceived("alice", "1", "a")
    assert isinstance(events[1], Violation) and events[1].fatal
    assert b"mallory" in events[1].reply
    assert len(events) == 2               # nothing after the violation
    assert p.receive(encode_message("alice", "4", "d")) == []


def test_dialled_connection_is_pinned_to_the_name_we_looked_up():
    p = PeerProtocol(remote="bob")
    (v,) = p.receive(encode_message("eve", "1", "hi"))
    assert isinstance(v, Violation) and v.fatal


def test_oversized_is_refused_but_the_connection_kept():
    p = PeerProtocol(max_payload=10)
    events = p.receive(b"MESSAGE 11 alice m1\n" + b"x" * 11 + encode_ping("after"))
    assert isinstance(events[0], Violation) and not events[0].fatal
    assert events[0].reply == b"ERR 33\nmessage too large (11 > 10 bytes)"
    assert events[1] == PingReceived("after")


def test_malformed_header_is_fatal_with_err_and_keeps_what_came_before():
    p = PeerProtocol()
    events = p.receive(encode_ping("a") + b"MESSAGE x\n" + encode_ping("b"))
    assert events[0] == PingReceived("a")
    assert isinstance(events[1], Violation) and events[1].fatal
    assert events[1].reply.startswith(b"ERR ")
    assert p.receive(encode_ping("c")) == []


def test_bad_message_args_and_unknown_types():
    p = PeerProtocol()
    (v,) = p.receive(b"HELLO 0\n")
    assert isinstance(v, Violation) and not v.fatal
    assert v.reply == b"ERR 38\nI did not understand the message HELLO"
    (v,) = p.receive(b"MESSAGE 1 -bad id\nx")
    assert isinstance(v, Violation) and v.fatal


def test_invalid_utf8_text_is_replaced_not_fatal():
    p = PeerProtocol()
    (m,) = p.receive(b"MESSAGE 2 alice m\n\xff\xfe")
    assert m.text == "\ufffd\ufffd"


def test_valid_name():
    assert valid_name("alice") and valid_name("a.b-c_9") and valid_name("x" * 32)
    for bad in ("", ".x", "-x", "x" * 33, "a b", "a,b", "é"):
        assert not valid_name(bad)


class TestTheBytes:
    def test_each_frame_is_what_the_spec_says(self):
        assert encode_message("alice", "m1", "hé") == b"MESSAGE 3 alice m1\nh\xc3\xa9"
        assert encode_message("alice", None, b"x\ny") == b"MESSAGE 3 alice\nx\ny"
        assert encode_ack("m1") == b"ACK 0 m1\n" and encode_ack(None) == b"ACK 0\n"
        assert encode_ping("t") == b"PING 0 t\n" and encode_ping(None) == b"PING 0\n"
        assert encode_pong("t") == b"PONG 0 t\n" and encode_pong(None) == b"PONG 0\n"
        assert encode_err("no") == b"ERR 2\nno"

    def test_they_are_messages_bytes(self):
        assert encode_message("alice", "m1", "hi") == bytes(
            Message("MESSAGE", ("alice", "m1"), "hi"))
        assert encode_ack("m1") == bytes(Message("ACK", ("m1",)))

    @pytest.mark.parametrize("text", ["", "hi", "hé\nllo", "x" * 70000])
    def test_the_delivery_paths_frames_are_the_same_bytes(self, text):
        assert message_frame("alice", "id9", text) == encode_message("alice", "id9", text)
        assert ack_frame("id9") == encode_ack("id9") and ack_frame(None) == encode_ack(None)


class TestNothingInvalidGetsOut:
    @pytest.mark.parametrize("bad", ["two words", "", "new\nline"])
    def test_an_invalid_argument_is_refused(self, bad):
        for encode in (lambda: encode_message("alice", bad, "x"), lambda: encode_ack(bad),
                       lambda: encode_ping(bad), lambda: encode_pong(bad),
                       lambda: encode_message(bad, "m1", "x")):
            with pytest.raises(ValueError):
                encode()
