"""The peer's frames are ``Message``'s encoding: the same bytes as the wire
format of SPEC section 4, and nothing invalid gets out."""

from __future__ import annotations

import pytest

from eurechat.message import Message
from eurechat.peer.protocol import (
    ack_frame,
    encode_ack,
    encode_err,
    encode_message,
    encode_ping,
    encode_pong,
    message_frame,
)


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
