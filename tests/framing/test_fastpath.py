"""Differential tests aimed at the edges of the pure decoder's fast path.

The fast path of ``fallback.Decoder`` iterates unbounded header lines, strips
them with ``rstrip`` and dispatches on the number of fields; each of those
choices has an edge where it must hand over to the reference path: a line
just over ``max_header`` (long args, or trailing spaces after a valid
header), a buffer ending in a header without its LF, control bytes that
``rstrip`` would remove, 1 and 2 args against small ``max_args``.  Every
stream here is compared with the compiled twin whole and cut at every
offset, and a few outcomes are also pinned, so that a shared mistake fails.
"""

from __future__ import annotations

import pytest

from eurechat import fallback
from support.framing_trace import outcome, split, trace

# Teach the fast path the types and lengths used below (it only takes types
# the reference path has seen once), so these streams really go through it.
fallback.Decoder().feed(b"MESSAGE 2 a b\nhiPING 0\nACK 0 x\n")


def header(type: str, length: int, args: str, width: int) -> bytes:
    """``TYPE LEN ARGS`` padded with 'x' in its last arg to ``width`` bytes, LF included."""
    line = f"{type} {length} {args}".encode()
    return line + b"x" * (width - len(line) - 1) + b"\n"


def every_cut(stream: bytes):
    yield [stream]
    for at in range(len(stream) + 1):
        yield split(stream, [at])


def same_as_compiled(both, stream: bytes, **limits) -> None:
    py, cy = both
    for chunks in every_cut(stream):
        assert trace(py, chunks, **limits) == trace(cy, chunks, **limits), chunks


@pytest.mark.parametrize("max_header", [44, 64, 4096])
@pytest.mark.parametrize("delta", [-1, 0, 1])
@pytest.mark.parametrize("args", ["a b", "a", "a b c"])
def test_header_length_limit_around_max_header(both, max_header, delta, args):
    first = b"PING 0\n"
    long = header("MESSAGE", 2, args, max_header + delta) + b"hi"
    for stream in (first + long + first, first + long, long):
        same_as_compiled(both, stream, max_header=max_header)
    got, error = outcome(both[0], [first + long + first], max_header=max_header)
    if delta > 0:
        assert error is not None and error[0] == "HeaderTooLong"
    else:
        assert error is None and len(got) == 3


@pytest.mark.parametrize("max_header", [44, 64])
def test_trailing_spaces_count_against_max_header(both, max_header):
    """``PING 0`` + spaces: valid up to max_header, HeaderTooLong past it."""
    for width in (max_header - 1, max_header, max_header + 1, max_header + 5):
        line = b"PING 0".ljust(width - 1) + b"\n"
        stream = b"ACK 0 x\n" + line + b"PING 0\n"
        same_as_compiled(both, stream, max_header=max_header)
        items, error = outcome(both[0], [stream], max_header=max_header)
        if width <= max_header:
            assert error is None and [key[1][0] for key in items] == ["ACK", "PING", "PING"]
        else:
            assert error[0] == "HeaderTooLong" and len(items) == 1


@pytest.mark.parametrize("tail", [b"", b"P", b"PING", b"PING 0", b"PING 0 ", b"ACK 0 x",
                                  b"MESSAGE 2 a b", b"MESSAGE 2 a b  ", b"MESSAGE 2 a b\r"])
def test_buffer_ending_inside_a_header(both, tail):
    """The last line without its LF is not a message, whatever it looks like."""
    stream = b"PING 0\n" + tail
    same_as_compiled(both, stream)
    decoder = both[0]()
    assert decoder.feed(stream) == [fallback.Message("PING")]
    assert decoder.buffered == len(tail) and decoder.in_frame == bool(tail)


@pytest.mark.parametrize("line", [
    b"PING 0 \n", b"PING 0  \r\n", b"PING 0\r\n", b"PING 0\r \n", b"PING 0\t\n",
    b"PING 0 \t\n", b"PING 0\x0b\n", b"PING 0\x0c\n", b"PING 0\x00\n", b"PING 0\x7f\n",
    b"ACK 0 x \n", b"ACK 0 x\t\n", b"ACK 0  x\n", b"ACK 0 x  y\n", b" ACK 0 x\n",
    b"ACK 0 \xc3\xa9t\xc3\xa9\n", b"ACK 0 \xc3\n", b"ACK 0 a\xffb\n", b"ACK 0 \xc2\x85\n",
    b"ACK 0 \xc2\xa0\n", b"MESSAGE 2 a b c d e\nhi", b"MESSAGE 2 a  b\nhi", b"ACK\n",
    b"ACK 0x\n", b"ACK 00 x\n", b"\n", b"   \n",
])
@pytest.mark.parametrize("max_args", [0, 1, 2, 3, 64])
def test_odd_headers_after_a_good_one(both, line, max_args):
    stream = b"PING 0\n" + line + b"PING 0\n"
    same_as_compiled(both, stream, max_args=max_args)


def test_non_ascii_args_decode_like_the_reference():
    items = fallback.Decoder().feed("ACK 0 été\nMESSAGE 2 ü 😀\nhi".encode())
    assert items == [fallback.Message("ACK", ["été"]),
                     fallback.Message("MESSAGE", ["ü", "😀"], b"hi")]


def test_max_payload_changed_between_feeds(both):
    """Each decoder's fast path knows only the lengths within its own limit."""
    stream = b"MESSAGE 5 a b\nhello"
    for Decoder in both:
        decoder = Decoder()
        assert decoder.feed(stream) == [fallback.Message("MESSAGE", ["a", "b"], b"hello")]
        decoder.max_payload = 4
        assert decoder.feed(stream) == [fallback.Oversized("MESSAGE", ["a", "b"], 5)]
        decoder.max_payload = 5
        assert decoder.feed(stream + b"PING 0\n") == [
            fallback.Message("MESSAGE", ["a", "b"], b"hello"), fallback.Message("PING")]


@pytest.mark.parametrize("length", [b"1500", b"0007", b"2048"])
def test_lengths_learned_under_one_limit_respect_another(both, length):
    size = int(length)
    stream = b"ACK " + length + b" x\n" + b"y" * size + b"PING 0\n"
    for max_payload in (1 << 20, size - 1, size, 0):
        same_as_compiled(both, stream, max_payload=max_payload)  # learns it first
        items = both[0](max_payload=max_payload).feed(stream)
        kind = fallback.Message if size <= max_payload else fallback.Oversized
        assert [i.__class__ for i in items] == [kind, fallback.Message]
