"""Property tests: round trips, chunking invariance and the differential
comparison of the compiled decoder with its pure-Python twin."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from eurechat.framing import Message, Oversized
from support.framing_trace import bytewise, item_key, outcome, split, trace, using

# -- strategies -------------------------------------------------------------

types = st.from_regex(r"\A[A-Za-z0-9_]{1,32}\Z")
# An arg: no space, no C0 control, no DEL; anything else that UTF-8 encodes.
arg_chars = st.characters(
    blacklist_categories=("Cs",),
    blacklist_characters=[chr(c) for c in range(0x21)] + ["\x7f"])
args = st.lists(st.text(arg_chars, min_size=1, max_size=12), max_size=5)
payloads = st.binary(max_size=300)
messages = st.builds(Message, types, args, payloads)


def wire(msgs) -> bytes:
    return b"".join(bytes(m) for m in msgs)


@st.composite
def tolerant_header(draw, msg: Message) -> bytes:
    """The wire form with what the SPEC tolerates: trailing spaces, CRLF."""
    head = bytes(msg)[: -len(msg.payload) or None].rstrip(b"\n")
    return head + b" " * draw(st.integers(0, 3)) + draw(st.sampled_from([b"\n", b"\r\n"])) \
        + msg.payload


limits = st.fixed_dictionaries({
    "max_payload": st.sampled_from([0, 3, 40, 1 << 20]),
    "max_header": st.sampled_from([8, 20, 64, 4096]),
    "max_args": st.sampled_from([0, 1, 3, 64]),
})

NOISE = [b" ", b"  ", b"\r", b"\n", b"\r\n", b"\x00", b"\x7f", b"0", b"9", b"-", b"+", b"_",
         b"\xff", b"\xc3", b"\xa9", b"\xed\xa0\x80", b"12345678901", b"A", b"x" * 40]


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """A valid stream with a few edits: byte flips, inserts, deletions."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.sampled_from(NOISE))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 3))]
        else:
            data[at:at] = data[max(0, at - 20):at]
    return bytes(data)


cuts = st.lists(st.integers(0, 5000), max_size=30)

# -- properties --------------------------------------------------------------


@given(msgs=st.lists(messages, max_size=8), cuts=cuts)
def test_round_trip(Decoder, msgs, cuts):
    """encode -> decode gives the same messages, however the bytes are cut."""
    data = wire(msgs)
    decoder = Decoder()
    got = []
    for chunk in split(data, cuts):
        got.extend(decoder.feed(chunk))
    assert got == msgs
    assert decoder.buffered == 0 and not decoder.in_frame


@given(msg=messages)
def test_message_wire_form_round_trips_through_parse(Decoder, msg):
    with using(Decoder) as fr:
        rest, parsed = fr.parse(bytes(msg) + b"PI")
    assert parsed == msg and rest == b"PI"


@given(data=st.data(), msgs=st.lists(messages, min_size=1, max_size=5))
def test_tolerated_forms_decode_like_the_canonical_one(Decoder, data, msgs):
    stream = b"".join(data.draw(tolerant_header(m)) for m in msgs)
    assert Decoder().feed(stream) == msgs


@given(msgs=st.lists(messages, max_size=6), cuts=cuts)
def test_chunking_invariance_down_to_single_bytes(Decoder, msgs, cuts):
    data = wire(msgs)
    whole = outcome(Decoder, [data])
    assert outcome(Decoder, split(data, cuts)) == whole
    assert outcome(Decoder, bytewise(data)) == whole


@given(data=st.data(), msgs=st.lists(messages, max_size=6), lim=limits, cuts=cuts)
def test_chunking_invariance_on_mutated_streams(Decoder, data, msgs, lim, cuts):
    """Errors too: same items before them, same class and text, any chunking."""
    stream = data.draw(mutated(wire(msgs)))
    whole = outcome(Decoder, [stream], **lim)
    assert outcome(Decoder, split(stream, cuts), **lim) == whole
    assert outcome(Decoder, bytewise(stream), **lim) == whole


@given(stream=st.binary(max_size=400), lim=limits, cuts=cuts)
def test_differential_arbitrary_bytes(both, stream, lim, cuts):
    py, cy = both
    for chunks in ([stream], split(stream, cuts)):
        assert trace(cy, chunks, **lim) == trace(py, chunks, **lim)


@given(data=st.data(), msgs=st.lists(messages, max_size=6), lim=limits, cuts=cuts)
def test_differential_mutated_streams(both, data, msgs, lim, cuts):
    """Same items, same error class and text at the same feed(), same .messages."""
    py, cy = both
    stream = data.draw(mutated(wire(msgs)))
    for chunks in ([stream], split(stream, cuts), bytewise(stream)):
        assert trace(cy, chunks, **lim) == trace(py, chunks, **lim)


@given(data=st.data(), msgs=st.lists(messages, max_size=6), lim=limits, cuts=cuts)
def test_differential_tolerant_and_oversized(both, data, msgs, lim, cuts):
    py, cy = both
    stream = b"".join(data.draw(tolerant_header(m)) for m in msgs)
    for chunks in ([stream], split(stream, cuts)):
        assert trace(cy, chunks, **lim) == trace(py, chunks, **lim)


@given(data=st.data(), msgs=st.lists(messages, max_size=6), lim=limits)
def test_differential_parse_and_parse_all(both, data, msgs, lim):
    stream = data.draw(mutated(wire(msgs)))
    results = []
    for cls in both:
        with using(cls) as fr:
            row = []
            for fn in (fr.parse, fr.parse_all):
                try:
                    rest, got = fn(stream, **lim)
                except Exception as exc:  # noqa: BLE001 - compared, not hidden
                    row.append(("err", exc.__class__.__name__, str(exc)))
                else:
                    got = [item_key(g) for g in got] if isinstance(got, list) else (
                        got and item_key(got))
                    row.append(("ok", rest, got))
            results.append(row)
    assert results[0] == results[1]


@given(msgs=st.lists(messages, max_size=4), big=st.integers(41, 5000), cuts=cuts)
def test_oversized_in_stream_order_any_chunking(Decoder, msgs, big, cuts):
    over = b"BIG %d a b\n" % big + b"\x00" * big
    data = wire(msgs) + over + wire(msgs)
    items, error = outcome(Decoder, split(data, cuts), max_payload=40)
    small = [item_key(m) for m in msgs if len(m.payload) <= 40]
    small_over = [item_key(Oversized(m.type, m.args, len(m.payload)))
                  if len(m.payload) > 40 else item_key(m) for m in msgs]
    assert error is None
    assert items == small_over + [item_key(Oversized("BIG", ("a", "b"), big))] + small_over
    assert len(small) <= len(small_over)
