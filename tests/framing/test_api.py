"""The public API of SPEC section 1: the seed lecture's examples, Message,
parse/parse_all, input types, and which implementation is in use."""

from __future__ import annotations

import copy
import inspect
import os
import pickle
import subprocess
import sys

import pytest

from eurechat import errors, fallback, framing
from eurechat.framing import Message, Oversized
from support.framing_trace import bytewise

# -- the seed lecture ------------------------------------------------------------------


def test_seed_lecture_message(Decoder):
    assert Decoder().feed(b"MESSAGE 12 sender\nHello world!") == [
        Message("MESSAGE", ["sender"], b"Hello world!")]


def test_spec_examples(Decoder):
    data = (b"MESSAGE 12 sender\nHello world!PING 0\nQUERY 0 bob\n"
            b"RESULT 22\ncorrado,127.0.0.1,5555")
    expected = [Message("MESSAGE", ["sender"], "Hello world!"), Message("PING"),
                Message("QUERY", ["bob"]), Message("RESULT", [], "corrado,127.0.0.1,5555")]
    assert Decoder().feed(data) == expected
    decoder = Decoder()
    assert [m for b in bytewise(data) for m in decoder.feed(b)] == expected
    assert b"".join(bytes(m) for m in expected) == data


def test_parse_all_keeps_truncated_tail(fr):
    rest, msgs = fr.parse_all(b"LOGIN 0 username\nPASS 0 password\nTRUNCATED...")
    assert rest == b"TRUNCATED..."
    assert msgs == [Message("LOGIN", ["username"]), Message("PASS", ["password"])]


def test_parse_one_at_a_time(fr):
    buf = b"LOGIN 0 username\nPASS 8\npassword"
    rest, msg = fr.parse(buf)
    assert msg == Message("LOGIN", ["username"]) and rest == b"PASS 8\npassword"
    rest, msg = fr.parse(rest)
    assert msg == Message("PASS", [], b"password") and rest == b""
    assert fr.parse(b"PASS 8\npass") == (b"PASS 8\npass", None)
    assert fr.parse(b"") == (b"", None)


def test_parse_all_nothing_complete(fr):
    assert fr.parse_all(b"PASS 8\npass") == (b"PASS 8\npass", [])


def test_parse_accepts_any_buffer(fr):
    data = b"PING 0\nPO"
    for buf in (data, bytearray(data), memoryview(data)):
        rest, msgs = fr.parse_all(buf)
        assert rest == b"PO" and type(rest) is bytes and msgs == [Message("PING")]


def test_parse_raises_protocol_error(fr):
    with pytest.raises(errors.InvalidLength):
        fr.parse(b"PING x\n")
    with pytest.raises(errors.HeaderTooLong):
        fr.parse_all(b"P" * 5000)


def test_parse_all_is_linear(fr):
    """Offsets, not re-slicing: 200,000 messages in one buffer decode at once."""
    data = b"ACK 0 0123456789abcdef\n" * 200_000
    rest, msgs = fr.parse_all(data)
    assert rest == b"" and len(msgs) == 200_000


# -- feed() input types and state ------------------------------------------------------------


def test_feed_accepts_bytes_bytearray_memoryview(Decoder):
    data = b"QUERY 0 bob\nRESULT 3\nabcPI"
    for conv in (bytes, bytearray, memoryview, lambda d: memoryview(bytearray(d))[0:],
                 lambda d: memoryview(b"xx" + d + b"yy")[2:-2]):
        decoder = Decoder()
        assert decoder.feed(conv(data)) == [Message("QUERY", ["bob"]),
                                            Message("RESULT", [], b"abc")]
        assert decoder.buffered == 2


def test_feed_non_contiguous_memoryview(Decoder):
    data = b"P!I!N!G! !0!\n!"
    view = memoryview(data)[::2]
    assert Decoder().feed(view) == [Message("PING")]


def test_feed_rejects_non_buffers(Decoder):
    for bad in ("PING 0\n", 5, None):
        with pytest.raises(TypeError):
            Decoder().feed(bad)


def test_fed_bytearray_may_be_reused(Decoder):
    """The decoder copies what it keeps: a reused receive buffer is safe."""
    decoder = Decoder()
    buf = bytearray(b"MESSAGE 5 a\nab")
    assert decoder.feed(buf) == []
    buf[:] = b"XXXXXXXXXXXXXX"
    buf[:] = b"cde"
    assert decoder.feed(buf) == [Message("MESSAGE", ["a"], b"abcde")]


def test_buffered_and_in_frame(Decoder):
    decoder = Decoder()
    assert decoder.buffered == 0 and not decoder.in_frame
    decoder.feed(b"MESS")
    assert decoder.buffered == 4 and decoder.in_frame
    decoder.feed(b"AGE 3\nab")
    assert decoder.buffered == 12 and decoder.in_frame
    assert decoder.feed(b"c") == [Message("MESSAGE", [], b"abc")]
    assert decoder.buffered == 0 and not decoder.in_frame


def test_empty_feed(Decoder):
    decoder = Decoder()
    assert decoder.feed(b"") == []
    decoder.feed(b"PI")
    assert decoder.feed(b"") == [] and decoder.buffered == 2


def test_items_are_messages_and_oversized(Decoder):
    items = Decoder(max_payload=1).feed(b"A 1 x\n1B 2 y z\n12")
    assert [type(i) for i in items] == [Message, Oversized]
    message, over = items
    assert (message.type, message.args, message.payload) == ("A", ("x",), b"1")
    assert (over.type, over.args, over.length) == ("B", ("y", "z"), 2)
    assert type(message.args) is tuple and type(message.payload) is bytes


# -- Message -------------------------------------------------------------------------------


def test_message_value_object():
    m = Message("MESSAGE", ["sender"], "Hello world!")
    assert m.payload == b"Hello world!" and m.args == ("sender",)
    assert bytes(m) == b"MESSAGE 12 sender\nHello world!"
    assert m == Message("MESSAGE", ("sender",), b"Hello world!")
    assert m != ("MESSAGE", ("sender",), b"Hello world!")
    assert hash(m) == hash(Message("MESSAGE", ["sender"], b"Hello world!"))
    assert Message("PING") != Oversized("PING", (), 0)
    with pytest.raises(AttributeError):
        m.type = "X"  # type: ignore[misc]
    assert framing.encode("PING", ["tok"]) == b"PING 0 tok\n"


@pytest.mark.parametrize("type_, args", [
    ("", ()), ("A" * 33, ()), ("PI NG", ()), ("PÍNG", ()),
    ("A", ("",)), ("A", ("a b",)), ("A", ("a\nb",)), ("A", ("\ud800",)), ("A", "abc"),
    ("A", ("x",) * 65), (b"A", ()),
])
def test_message_rejects_invalid(type_, args):
    with pytest.raises(ValueError):
        Message(type_, args)


def test_messages_pickle_and_copy_as_values(Decoder):
    decoded = Decoder(max_payload=1).feed(b"A 1 x\n1B 2 y z\n12")
    for item in decoded + [Message("MESSAGE", ["bob"], "héllo")]:
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            back = pickle.loads(pickle.dumps(item, protocol))
            assert back == item and type(back) is type(item)
        assert copy.copy(item) == item and copy.deepcopy(item) == item


def test_unpickling_a_message_validates_it():
    # The decoders build Messages with tuple's own constructor; unpickling
    # goes through Message(...) and so cannot smuggle in an invalid one.
    forged = pickle.dumps(Message("AAAA")).replace(b"AAAA", b"A A ")
    with pytest.raises(ValueError):
        pickle.loads(forged)


# -- which implementation ------------------------------------------------------------------


def test_implementation_matches_environment():
    """``EURECHAT_PUREPYTHON=1`` forces the twin; otherwise, when the
    extension was required (ci/test.sh), it must be the compiled one."""
    if os.environ.get("EURECHAT_PUREPYTHON"):
        assert framing.IMPLEMENTATION == "python"
        assert framing.Decoder is fallback.Decoder
    else:
        from eurechat import _framing
        assert framing.IMPLEMENTATION == "cython"
        assert framing.Decoder is _framing.Decoder


@pytest.mark.parametrize("forced, expected", [("1", "python"), ("", "cython")])
def test_implementation_in_fresh_interpreter(forced, expected):
    env = dict(os.environ, EURECHAT_PUREPYTHON=forced)
    out = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c",
         "import eurechat.framing as f; print(f.IMPLEMENTATION, f.Decoder.__module__)"],
        env=env, capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out[0] == expected
    assert out[1] == ("eurechat.fallback" if expected == "python" else "eurechat._framing")


def test_twins_share_docstrings_and_api(both):
    py, cy = both
    assert inspect.cleandoc(py.__doc__) == inspect.cleandoc(cy.__doc__)
    public = {"feed", "max_payload", "max_header", "max_args", "buffered", "in_frame",
              "failed", "_drain"}
    for name in public:
        assert inspect.cleandoc(getattr(py, name).__doc__) == \
            inspect.cleandoc(getattr(cy, name).__doc__), name


def test_compiled_module_has_a_stub():
    from eurechat import _framing
    stub = os.path.join(os.path.dirname(_framing.__file__), "_framing.pyi")
    assert os.path.exists(stub)


def test_feed_refuses_reentrance(Decoder, monkeypatch):
    """Code that runs inside feed() (here: the diagnosis of a bad header)
    cannot feed the same decoder: the compiled one would have its tail
    buffer moved under it.  Both twins refuse alike."""
    import sys

    from eurechat.errors import InvalidLength

    module = sys.modules[Decoder.__module__]
    real = module.diagnose_header
    decoder = Decoder()
    seen = []

    def reentrant(line, max_args):
        with pytest.raises(RuntimeError, match="re-entered"):
            decoder.feed(b"PING 0\n")
        seen.append(bytes(line))
        return real(line, max_args)

    monkeypatch.setattr(module, "diagnose_header", reentrant)
    with pytest.raises(InvalidLength):
        decoder.feed(b"PING 0\nPING x\n")
    assert seen == [b"PING x"]
    assert decoder.failed
