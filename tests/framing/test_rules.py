"""One named test per rule and limit of SPEC section 1, on both decoders.

Each rejection is checked for its class (which rule) and for the moment it
is raised (which feed call), since that is what a server acts on."""

from __future__ import annotations

import pytest

from eurechat.errors import (
    FrameTooLarge,
    HeaderTooLong,
    InvalidArgument,
    InvalidLength,
    InvalidType,
    MalformedHeader,
    ProtocolError,
    TooManyArgs,
)
from eurechat.framing import Message, Oversized
from support.framing_trace import bytewise


def reject(Decoder, line: bytes, cls, **limits) -> ProtocolError:
    """Feed ``line`` byte by byte: nothing may be raised before its last byte
    (the LF), and then exactly ``cls``."""
    decoder = Decoder(**limits)
    for b in bytewise(line[:-1]):
        assert decoder.feed(b) == []
    with pytest.raises(ProtocolError) as info:
        decoder.feed(line[-1:])
    assert info.type is cls, f"{info.type.__name__}: {info.value}"
    assert decoder.failed
    return info.value


# -- the length field ----------------------------------------------------------

def test_length_non_digit(Decoder):
    reject(Decoder, b"MESSAGE abc\n", InvalidLength)
    reject(Decoder, b"MESSAGE 1a\n", InvalidLength)


@pytest.mark.parametrize("length", [b"+5", b"-1"])
def test_length_signed(Decoder, length):
    reject(Decoder, b"MESSAGE " + length + b" bob\n", InvalidLength)


def test_length_spaced(Decoder):
    err = reject(Decoder, b"MESSAGE  5 bob\n", MalformedHeader)
    assert "two spaces" in str(err)


def test_length_underscored(Decoder):
    """``int(b"1_0") == 10``: the decoder must never let int() judge a length."""
    reject(Decoder, b"MESSAGE 1_0\n", InvalidLength)


@pytest.mark.parametrize("digits", ["\u0663", "\uff15", "\u0e51\u0e52", "\U0001d7d3"])
def test_length_non_ascii_digits(Decoder, digits):
    """``int("\u0663") == 3``: only ASCII digits are digits on the wire."""
    reject(Decoder, b"MESSAGE " + digits.encode() + b"\n", InvalidLength)


def test_length_eleven_digits_rejected_before_any_payload(Decoder):
    err = reject(Decoder, b"MESSAGE 12345678901\n", InvalidLength)
    assert "10 digits" in str(err)
    # Thousands of digits: rejected on the LF, no int() conversion limit hit.
    reject(Decoder, b"X " + b"9" * 4000 + b"\n", InvalidLength)


def test_length_ten_digits_is_valid_and_oversized(Decoder):
    decoder = Decoder()
    assert decoder.feed(b"MESSAGE 9999999999 bob\nabc") == [
        Oversized("MESSAGE", ("bob",), 9999999999)]
    assert decoder.buffered == 0 and decoder.in_frame


def test_length_missing(Decoder):
    reject(Decoder, b"PING\n", InvalidLength)
    reject(Decoder, b"PING \n", InvalidLength)


def test_leading_zeros_are_accepted_on_input(Decoder):
    assert Decoder().feed(b"PING 007\nabcdefg") == [Message("PING", (), b"abcdefg")]


# -- control bytes ---------------------------------------------------------------

def test_lone_cr(Decoder):
    err = reject(Decoder, b"PING 0\rX\n", MalformedHeader)
    assert "lone CR" in str(err)
    reject(Decoder, b"PI\rNG 0\n", MalformedHeader)
    reject(Decoder, b"QUERY 0 b\rob\n", InvalidArgument)
    reject(Decoder, b"PING 0\r\r\n", MalformedHeader)


def test_nul_byte(Decoder):
    reject(Decoder, b"QUERY 0 b\x00b\n", InvalidArgument)
    reject(Decoder, b"QU\x00RY 0 bob\n", MalformedHeader)
    reject(Decoder, b"QUERY 0\x00\n", MalformedHeader)


def test_del_and_tab_are_control_bytes(Decoder):
    reject(Decoder, b"QUERY 0 b\x7fb\n", InvalidArgument)
    reject(Decoder, b"QUERY 0\tbob\n", MalformedHeader)


# -- spaces ------------------------------------------------------------------------

def test_double_space_between_args(Decoder):
    err = reject(Decoder, b"BIND 0 127.0.0.1  5555\n", MalformedHeader)
    assert "two spaces" in str(err)


def test_leading_space_is_an_empty_type(Decoder):
    reject(Decoder, b" PING 0\n", InvalidType)


def test_trailing_spaces_and_crlf_tolerated(Decoder):
    decoder = Decoder()
    assert decoder.feed(b"PING 0   \r\nQUERY 0 bob \nACK 2  \r\nok") == [
        Message("PING"), Message("QUERY", ["bob"]), Message("ACK", [], b"ok")]
    assert decoder.buffered == 0


# -- the type ----------------------------------------------------------------------

def test_empty_type(Decoder):
    reject(Decoder, b"\n", InvalidType)
    reject(Decoder, b"\r\n", InvalidType)


def test_type_longer_than_32(Decoder):
    assert Decoder().feed(b"T" * 32 + b" 0\n") == [Message("T" * 32)]
    err = reject(Decoder, b"T" * 33 + b" 0\n", InvalidType)
    assert "32" in str(err)


def test_type_charset(Decoder):
    reject(Decoder, b"PI-NG 0\n", InvalidType)
    reject(Decoder, "PÍNG 0\n".encode(), InvalidType)
    assert Decoder().feed(b"lower_case_9 0\n") == [Message("lower_case_9")]


# -- args ----------------------------------------------------------------------------

def test_too_many_args(Decoder):
    ok = b"X 0" + b" a" * 64 + b"\n"
    assert Decoder().feed(ok) == [Message("X", ["a"] * 64)]
    err = reject(Decoder, b"X 0" + b" a" * 65 + b"\n", TooManyArgs)
    assert "65 > max_args (64)" in str(err)
    reject(Decoder, b"X 0 a b\n", TooManyArgs, max_args=1)


@pytest.mark.parametrize("arg", [b"\xff", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"ok\xe2\x82"])
def test_invalid_utf8_args(Decoder, arg):
    err = reject(Decoder, b"QUERY 0 bob " + arg + b"\n", InvalidArgument)
    assert "UTF-8" in str(err)


def test_utf8_args_decoded(Decoder):
    line = "MESSAGE 0 corrado perché 😀 \u00a0\n".encode()
    assert Decoder().feed(line) == [Message("MESSAGE", ["corrado", "perché", "😀", "\u00a0"])]


def test_control_byte_wins_over_too_many_args(Decoder):
    """The first rule broken, left to right, is the one reported."""
    reject(Decoder, b"X 0 a b c\x01\n", InvalidArgument, max_args=1)


# -- max_header ------------------------------------------------------------------------

def test_header_over_4096_bytes_without_lf_fails_at_once(Decoder):
    """Fails when the 4096th byte without LF arrives, not when an LF comes."""
    decoder = Decoder()
    assert decoder.feed(b"MESSAGE 5 " + b"a" * 4085) == []   # 4095 bytes
    assert decoder.buffered == 4095
    with pytest.raises(HeaderTooLong, match="4096"):
        decoder.feed(b"a")
    assert decoder.failed and decoder.buffered == 0


def test_header_of_exactly_4096_bytes_with_lf_is_accepted(Decoder):
    line = b"X 0 " + b"a" * 4091 + b"\n"
    assert len(line) == 4096
    for chunks in ([line], bytewise(line)):
        decoder = Decoder()
        got = [m for c in chunks for m in decoder.feed(c)]
        assert got == [Message("X", ["a" * 4091])]


def test_header_too_long_in_one_big_chunk(Decoder):
    with pytest.raises(HeaderTooLong) as info:
        Decoder().feed(b"PING 0\n" + b"a" * 5000 + b"\n")
    assert info.value.messages == [Message("PING")]


def test_garbage_without_lf_fails_at_max_header_not_before(Decoder):
    decoder = Decoder(max_header=16)
    assert decoder.feed(b"\x00" * 15) == []
    with pytest.raises(HeaderTooLong):
        decoder.feed(b"\x00")


# -- max_payload -------------------------------------------------------------------------

def test_oversized_payload_in_stream_order_buffered_stays_small(Decoder):
    decoder = Decoder(max_payload=1000)
    got = decoder.feed(b"PING 0 a\nMESSAGE 1000000 bob m1\n" + b"x" * 500)
    assert got == [Message("PING", ["a"]), Oversized("MESSAGE", ("bob", "m1"), 1000000)]
    for _ in range(1998):  # 999,000 more payload bytes, in 500-byte chunks
        assert decoder.feed(b"x" * 500) == []
        assert decoder.buffered == 0 and decoder.in_frame
    assert decoder.feed(b"x" * 500 + b"QUERY 0 bob\nPI") == [Message("QUERY", ["bob"])]
    assert decoder.buffered == 2
    assert decoder.feed(b"NG 0\n") == [Message("PING")]
    assert not decoder.in_frame


def test_oversized_then_neighbours_in_one_feed(Decoder):
    data = b"A 0\nBIG 5 x\n12345B 3\nabc"
    assert Decoder(max_payload=4).feed(data) == [
        Message("A"), Oversized("BIG", ("x",), 5), Message("B", [], b"abc")]


def test_payload_equal_to_max_payload_is_delivered(Decoder):
    assert Decoder(max_payload=4).feed(b"B 4\nabcd") == [Message("B", [], b"abcd")]


def test_max_payload_zero(Decoder):
    assert Decoder(max_payload=0).feed(b"A 0\nB 1\nxC 0\n") == [
        Message("A"), Oversized("B", (), 1), Message("C")]


def test_max_payload_settable_between_feeds(Decoder):
    decoder = Decoder(max_payload=4096)
    assert decoder.feed(b"PASS 0 secret\n") == [Message("PASS", ["secret"])]
    decoder.max_payload = 1 << 20
    assert decoder.max_payload == 1 << 20
    assert decoder.feed(b"BLOB 5000\n" + b"z" * 5000) == [Message("BLOB", [], b"z" * 5000)]
    with pytest.raises(ValueError):
        decoder.max_payload = -1


def test_parse_raises_frame_too_large(fr):
    with pytest.raises(FrameTooLarge) as info:
        fr.parse(b"BIG 10\n", max_payload=5)
    assert (info.value.type, info.value.length, info.value.limit) == ("BIG", 10, 5)
    with pytest.raises(FrameTooLarge):
        fr.parse_all(b"A 0\nBIG 10\n0123456789", max_payload=5)


# -- failure is final, and says what came before ------------------------------------------

def test_error_carries_messages_decoded_before_it(Decoder):
    decoder = Decoder()
    with pytest.raises(InvalidLength) as info:
        decoder.feed(b"PING 0\nQUERY 0 bob\nPASS x\nPING 0\n")
    assert info.value.messages == [Message("PING"), Message("QUERY", ["bob"])]


def test_decoder_stays_failed(Decoder):
    decoder = Decoder()
    with pytest.raises(InvalidType):
        decoder.feed(b"!!! 0\n")
    for _ in range(2):
        with pytest.raises(InvalidType):
            decoder.feed(b"PING 0\n")
    assert decoder.failed


def test_limits_validated(Decoder):
    for bad in ({"max_payload": -1}, {"max_header": 4}, {"max_args": -1},
                {"max_payload": "10"}):
        with pytest.raises(ValueError):
            Decoder(**bad)
    d = Decoder(max_payload=7, max_header=100, max_args=2)
    assert (d.max_payload, d.max_header, d.max_args) == (7, 100, 2)
    with pytest.raises(AttributeError):
        d.max_header = 10


def test_large_payload_in_small_chunks_is_held_as_received(Decoder):
    """Memory follows the bytes received, not the length announced; the
    message completes intact however small the chunks."""
    size = 4 << 20
    decoder = Decoder(max_payload=8 << 20)
    header = b"BLOB %d x\n" % size
    assert decoder.feed(header) == []
    assert decoder.buffered == len(header) and decoder.in_frame
    chunk = bytes(range(256)) * 4
    for i in range(size // len(chunk) - 1):
        assert decoder.feed(chunk) == []
        assert decoder.buffered == len(header) + (i + 1) * len(chunk)
    (msg,) = decoder.feed(chunk)
    assert msg.type == "BLOB" and msg.args == ("x",) and msg.payload == chunk * (size // len(chunk))
    assert decoder.buffered == 0 and not decoder.in_frame
