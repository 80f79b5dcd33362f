"""Unit tests of the sans-IO session core: every transition of SPEC §2's table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eurechat.directory.interfaces import Registration
from eurechat.directory.session import (
    DECODE_SLICE,
    Authenticate,
    Bind,
    Leave,
    Register,
    Result,
    Session,
    SessionConfig,
    State,
    normalize_ip,
    valid_username,
)
from eurechat.framing import parse_all

REGS = {
    "bob": Registration("bob", "127.0.0.1", 6000),
    "alice": Registration("alice", "127.0.0.2", 5000),
    "zed": Registration("zed", "::1", 7000),
}


def F(type_: bytes, body: bytes) -> bytes:
    """A reply frame, its length computed (the SPEC's literal ones are in the e2e test)."""
    return b"%s %d\n%s" % (type_, len(body), body)


def query(name=None):
    if name is not None:
        return (REGS[name],) if name in REGS else ()
    return sorted(REGS.values())


def new(**config) -> Session:
    return Session(SessionConfig(**config), query, "127.0.0.1")


def ready(name="corrado", **config) -> Session:
    s = new(**config)
    assert s.feed(b"USER 0 %s\n" % name.encode()).data.startswith(b"ACK")
    out = s.feed(b"PASS 0 password1\n")
    assert out.effect == Authenticate(name, b"password1")
    assert s.resume(Result.OK).data == F(b"ACK", b"successfully authenticated")
    assert s.state is State.READY
    return s


# -- state "new" -------------------------------------------------------------

@pytest.mark.parametrize("verb", ["USER", "LOGIN"])
def test_new_user_or_login_asks_for_password(verb):
    s = new()
    out = s.feed(f"{verb} 0 corrado\n".encode())
    assert out.data == F(b"ACK", b"hi corrado, authentication required")
    assert not out.close and out.effect is None
    assert s.state is State.AUTH


@pytest.mark.parametrize("data", [b"QUERY 0\n", b"PASS 0 x\n", b"BIND 0 1.2.3.4 5000\n",
                                  b"USER 0\n", b"USER 0 a b\n", b"LEAVE 0\n"])
def test_new_anything_else_closes(data):
    s = new()
    out = s.feed(data)
    assert out.data == F(b"ERR", b"a 'USER <username>' command was expected!")
    assert out.close and s.closed


def test_register_with_arg_and_with_payload():
    s = new()
    out = s.feed(b"REGISTER 0 alice secret-pass\n")
    assert out.effect == Register("alice", b"secret-pass") and out.data == b""
    out = s.resume(Result.OK)
    assert out.data == F(b"ACK", b"account alice created")
    assert s.state is State.NEW
    out = s.feed(b"REGISTER 12 bob\npass with sp")
    assert out.effect == Register("bob", b"pass with sp")
    assert s.resume(Result.EXISTS).data == F(b"ERR", b"account bob already exists")
    assert s.state is State.NEW and not s.closed


@pytest.mark.parametrize("data,reason", [
    (b"REGISTER 0 .alice secret-pass\n", b"invalid username"),
    (b"REGISTER 0 -alice secret-pass\n", b"invalid username"),
    (b"REGISTER 0 al/ice secret-pass\n", b"invalid username"),
    (b"REGISTER 0 " + b"a" * 33 + b" secret-pass\n", b"invalid username"),
    (b"REGISTER 0 alice short\n", b"invalid password"),
    (b"REGISTER 0 alice\n", b"invalid password"),
])
def test_register_rejects_bad_names_and_passwords(data, reason):
    s = new()
    out = s.feed(data)
    assert out.effect is None and not out.close
    assert out.data.startswith(b"ERR ") and reason in out.data


def test_register_closed():
    s = new(registration_open=False)
    out = s.feed(b"REGISTER 0 alice secret-pass\n")
    assert out.data == F(b"ERR", b"registration is closed") and not out.close


def test_register_unavailable_keeps_session():
    s = new()
    s.feed(b"REGISTER 0 alice secret-pass\n")
    out = s.resume(Result.UNAVAILABLE)
    assert out.data == F(b"ERR", b"directory unavailable, retry later") and not out.close
    assert s.feed(b"USER 0 alice\n").data.startswith(b"ACK")


# -- state "auth" ------------------------------------------------------------

def test_pass_as_arg_or_payload():
    s = new()
    s.feed(b"USER 0 corrado\n")
    assert s.feed(b"PASS 0 secret\n").effect == Authenticate("corrado", b"secret")
    s = new()
    s.feed(b"USER 0 corrado\n")
    assert s.feed(b"PASS 9\nwith spac").effect == Authenticate("corrado", b"with spac")


def test_pass_success_raises_payload_limit():
    s = ready()
    assert s.decoder.max_payload == 64 * 1024


@pytest.mark.parametrize("result,reply", [
    (Result.FAILED, F(b"ERR", b"authentication failed")),
    (Result.THROTTLED, F(b"ERR", b"too many failed attempts, retry later")),
])
def test_pass_failure_closes(result, reply):
    s = new()
    s.feed(b"USER 0 corrado\n")
    s.feed(b"PASS 0 wrong\n")
    out = s.resume(result)
    assert out.data == reply and out.close and s.closed


def test_pass_unavailable_keeps_auth_state():
    s = new()
    s.feed(b"USER 0 corrado\n")
    s.feed(b"PASS 0 pw\n")
    out = s.resume(Result.UNAVAILABLE)
    assert out.data == F(b"ERR", b"directory unavailable, retry later") and not out.close
    assert s.state is State.AUTH


@pytest.mark.parametrize("data", [b"QUERY 0\n", b"USER 0 x\n", b"PASS 0 a b\n"])
def test_auth_anything_else_closes(data):
    s = new()
    s.feed(b"USER 0 corrado\n")
    out = s.feed(data)
    assert out.data == F(b"ERR", b"a 'PASS <password>' command was expected!") and out.close


# -- state "ready" -----------------------------------------------------------

def test_query_all_sorted_and_one_and_none():
    s = ready()
    out = s.feed(b"QUERY 0\n")
    body = b"alice,127.0.0.2,5000\nbob,127.0.0.1,6000\nzed,::1,7000"
    assert out.data == b"RESULT %d\n%s" % (len(body), body)
    assert s.feed(b"QUERY 0 bob\n").data == F(b"RESULT", b"bob,127.0.0.1,6000")
    assert s.feed(b"QUERY 0 nobody\n").data == F(b"RESULT", b"")


def test_bind_flow():
    s = ready()
    out = s.feed(b"BIND 0 127.0.0.1 5555\n")
    assert out.effect == Bind(Registration("corrado", "127.0.0.1", 5555))
    assert s.resume(Result.OK).data == F(b"ACK", b"bound successfully to 127.0.0.1:5555")
    s.feed(b"BIND 0 127.0.0.1 5555\n")
    out = s.resume(Result.INVALID)
    assert out.data == F(b"ERR", b"invalid bind notification") and out.close


@pytest.mark.parametrize("args", [b"10.1.2.3 5555", b"127.0.0.1 80", b"127.0.0.1 1023",
                                  b"127.0.0.1 65536", b"127.0.0.1 x", b"localhost 5555",
                                  b"127.0.0.1", b"127.0.0.1 5555 9", b"127.0.0.1 -5555"])
def test_bind_rejected_without_probe(args):
    s = ready()
    out = s.feed(b"BIND 0 " + args + b"\n")
    assert out.effect is None
    assert out.data == F(b"ERR", b"invalid bind notification") and out.close


def test_bind_policy_any_allows_foreign_address():
    s = ready(bind_policy="any")
    assert s.feed(b"BIND 0 10.1.2.3 5555\n").effect == Bind(
        Registration("corrado", "10.1.2.3", 5555))


def test_bind_own_address_ipv4_mapped():
    s = Session(SessionConfig(), query, "::ffff:127.0.0.1")
    s.feed(b"USER 0 c\n")
    s.feed(b"PASS 0 p\n")
    s.resume(Result.OK)
    assert s.feed(b"BIND 0 127.0.0.1 5555\n").effect is not None


def test_leave():
    s = ready()
    out = s.feed(b"LEAVE 0\n")
    assert out.effect == Leave("corrado")
    assert s.resume(Result.OK).data == F(b"ACK", b"deregistered from directory")


def test_ready_unknown_closes():
    s = ready()
    out = s.feed(b"FROB 0\n")
    assert out.data == F(b"ERR", b"I did not understand the message FROB") and out.close


def test_backend_unavailable_on_bind_keeps_session():
    s = ready()
    s.feed(b"BIND 0 127.0.0.1 5555\n")
    out = s.resume(Result.UNAVAILABLE)
    assert out.data == F(b"ERR", b"directory unavailable, retry later") and not out.close
    assert s.feed(b"QUERY 0 bob\n").data.startswith(b"RESULT 18")


# -- any state ---------------------------------------------------------------

@pytest.mark.parametrize("setup", [new, ready])
def test_ping_in_any_state(setup):
    s = setup()
    assert s.feed(b"PING 0\n").data == b"PONG 0\n"
    assert s.feed(b"PING 0 tok\n").data == b"PONG 0 tok\n"
    assert not s.closed


def test_ping_in_auth_state():
    s = new()
    s.feed(b"USER 0 x\n")
    assert s.feed(b"PING 0 t\n").data == b"PONG 0 t\n"
    assert s.state is State.AUTH


def test_oversized_before_auth_is_answered_and_session_continues():
    s = new()
    out = s.feed(b"USER 5000 corrado\n" + b"x" * 5000 + b"PING 0\n")
    assert out.data == F(b"ERR", b"message too large (5000 > 4096 bytes)") + b"PONG 0\n"
    assert not out.close and s.state is State.NEW


def test_oversized_after_auth():
    s = ready()
    out = s.feed(b"QUERY 70000\n" + b"x" * 70000 + b"QUERY 0 bob\n")
    assert out.data == (F(b"ERR", b"message too large (70000 > 65536 bytes)")
                        + F(b"RESULT", b"bob,127.0.0.1,6000"))


def test_malformed_answers_earlier_requests_then_errs_and_closes():
    s = new()
    out = s.feed(b"PING 0 a\nBAD-TYPE 0\nPING 0 b\n")
    assert out.data.startswith(b"PONG 0 a\nERR ")
    assert b"malformed message" in out.data and b"PONG 0 b" not in out.data
    assert out.close and s.closed
    assert s.feed(b"PING 0\n").data == b""


def test_requests_wait_behind_an_effect():
    s = new()
    out = s.feed(b"USER 0 c\nPASS 0 pw\nQUERY 0 bob\nPING 0 z\n")
    assert out.data == F(b"ACK", b"hi c, authentication required")
    assert isinstance(out.effect, Authenticate)
    assert s.step().data == b""  # nothing happens while the effect is pending
    out = s.resume(Result.OK)
    assert out.data == (F(b"ACK", b"successfully authenticated")
                        + F(b"RESULT", b"bob,127.0.0.1,6000") + b"PONG 0 z\n")


def test_step_budget_bounds_output():
    s = ready()
    s.receive(b"QUERY 0\n" * 10)
    first = s.step(budget=1)
    assert first.data.count(b"RESULT") == 1
    rest = s.step()
    assert rest.data.count(b"RESULT") == 9


def test_chunking_does_not_change_output():
    stream = b"USER 0 c\r\nPING 0 x\nPASS 3\nabcQUERY 0 bob\n"
    whole = new()
    a = whole.feed(stream)
    a2 = whole.resume(Result.OK)
    bytewise = new()
    chunks = []
    effect = None
    for i in range(len(stream)):
        out = bytewise.feed(stream[i:i + 1])
        chunks.append(out.data)
        effect = effect or out.effect
    assert effect == Authenticate("c", b"abc")
    chunks.append(bytewise.resume(Result.OK).data)
    assert b"".join(chunks) == a.data + a2.data


def test_timeouts_close():
    s = new()
    out = s.timeout("auth")
    assert out.close and out.data.startswith(b"ERR ") and b"authentication timeout" in out.data
    s = ready()
    s.receive(b"QUERY 10\nabc")
    assert s.in_frame
    out = s.timeout("frame")
    assert out.close and b"frame" in out.data


def test_resume_without_effect_is_an_error():
    with pytest.raises(RuntimeError):
        new().resume(Result.OK)


def test_helpers():
    assert valid_username("a") and valid_username("A_b.c-d") and valid_username("x" * 32)
    assert not valid_username("") and not valid_username(".a") and not valid_username("x" * 33)
    assert not valid_username("é")
    assert normalize_ip("::ffff:10.0.0.1") == "10.0.0.1"
    assert normalize_ip("::1") == "::1" and normalize_ip("host") is None


@given(st.lists(st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"USER 0 bob\n", b"PASS 0 pw\n", b"QUERY 0\n", b"PING 0 x\n",
                     b"BIND 0 127.0.0.1 5555\n", b"LEAVE 0\n", b"REGISTER 0 a bbbbbbbb\n",
                     b"QUERY 5000\n", b"\r\n", b"X" * 300])), max_size=30),
    st.sampled_from(list(Result)))
def test_any_input_never_raises_and_replies_are_frames(chunks, result):
    """Bad input costs at most the session: the core never raises, and
    whatever it writes is a sequence of well-formed frames."""
    s = new(preauth_max_payload=64)
    written = b""
    for chunk in chunks:
        out = s.feed(chunk)
        while out.effect is not None:
            written += out.data
            out = s.resume(result)
        written += out.data
        if out.close:
            assert s.closed
            break
    rest, frames = parse_all(written)
    assert rest == b""
    assert all(f.type in ("ACK", "ERR", "RESULT", "PONG") for f in frames)


def test_query_all_follows_a_real_view_across_changes():
    """The QUERY 0 frame is reused only while the view's sequence is the same."""
    import asyncio

    from eurechat.directory.presence.memory import MemoryRegistry
    reg = MemoryRegistry()
    s = Session(SessionConfig(query_limit=2), reg.query, "127.0.0.1")
    s.feed(b"USER 0 c\n")
    s.feed(b"PASS 0 p\n")
    s.resume(Result.OK)
    asyncio.run(reg.bind(Registration("b", "127.0.0.1", 2000)))
    assert s.feed(b"QUERY 0\n").data == F(b"RESULT", b"b,127.0.0.1,2000")
    assert s.feed(b"QUERY 0\n").data == F(b"RESULT", b"b,127.0.0.1,2000")
    asyncio.run(reg.bind(Registration("a", "127.0.0.1", 1000)))
    assert s.feed(b"QUERY 0\n").data == F(b"RESULT", b"a,127.0.0.1,1000\nb,127.0.0.1,2000")
    asyncio.run(reg.bind(Registration("c", "127.0.0.1", 3000)))
    body = b"a,127.0.0.1,1000\nb,127.0.0.1,2000"
    assert s.feed(b"QUERY 0\n").data == b"RESULT %d truncated\n%s" % (len(body), body)
    asyncio.run(reg.remove("a"))
    assert s.feed(b"QUERY 0\n").data == F(b"RESULT", b"b,127.0.0.1,2000\nc,127.0.0.1,3000")


def test_a_large_read_is_decoded_slice_by_slice():
    """A 256 KiB read of pipelined requests: only one slice is decoded at a time
    (decoded requests cost ~10x their wire size), the rest waits as bytes; the
    replies are all there, in order, and an effect or a malformed frame in the
    middle still stops the session at the right place."""
    s = ready()
    count = 256 * 1024 // len(b"PING 0 12345\n") + 1
    s.receive(b"".join(b"PING 0 %05d\n" % i for i in range(count)))
    assert 0 < s.pending <= DECODE_SLICE // len(b"PING 0 12345\n") + 1
    assert s.has_input and not s.in_frame
    replies = b""
    while s.has_input:
        out = s.step(budget=1000)
        assert out.data and not out.close
        assert s.pending <= DECODE_SLICE // len(b"PING 0 12345\n") + 1
        replies += out.data
    assert replies == b"".join(b"PONG 0 %05d\n" % i for i in range(count))
    # With room in the budget, one call answers across slices: one write per read.
    s.receive(b"PING 0 x\n" * 10_000)
    data, close, effect = s.run(budget=1 << 20)
    assert data == b"PONG 0 x\n" * 10_000 and not s.has_input
    # A BIND in the middle of a large read: requests behind it wait for it.
    s = ready(bind_policy="any")
    tail = b"PING 0 z\n" * 4000
    s.receive(b"PING 0 a\n" * 3000 + b"BIND 0 127.0.0.1 5000\n" + tail + b"QUERY 1\n")
    out = s.step()
    assert out.data == b"PONG 0 a\n" * 3000 and isinstance(out.effect, Bind)
    assert s.step().data == b""
    out = s.resume(Result.OK)
    assert out.data.startswith(F(b"ACK", b"bound successfully to 127.0.0.1:5000"))
    assert out.data.endswith(b"PONG 0 z\n" * 4000) and not s.has_input
    assert s.in_frame  # the last frame (QUERY 1) really is incomplete
    # A malformed frame deep in a large read: everything before it is answered.
    s = ready()
    s.receive(b"PING 0\n" * 5000 + b"BAD x\n" + b"PING 0\n" * 5000)
    out = s.step()
    assert out.close and out.data.startswith(b"PONG 0\n" * 5000 + b"ERR ")
    assert not s.has_input


def test_junk_user_names_are_not_interned():
    from eurechat.directory import session as session_module
    name = "x" * 3000
    s = new()
    assert s.feed(b"USER 0 %s\n" % name.encode()).data.startswith(b"ACK")
    assert name not in session_module._SOURCES


_REQUESTS = st.sampled_from([b"PING 0\n", b"PING 0 tok\n", b"QUERY 0 bob\n", b"QUERY 0\n",
                             b"QUERY 3\nabc", b"PING 70000\n" + b"z" * 70000,
                             b"PING 5 x\r\nhello", b"LEAVE 0\n"])


@given(st.lists(_REQUESTS, min_size=1, max_size=400), st.data())
def test_slicing_and_chunking_never_change_the_replies(requests, data):
    """However a long pipelined stream is cut into reads (large ones decoded
    slice by slice) and however small the output budget, the replies are the
    same bytes in the same order as for the stream answered in one go."""
    stream = b"".join(requests)

    def drive(chunks, budget):
        s = ready()
        out = b""
        for chunk in chunks:
            s.receive(chunk)
            while s.has_input:
                step = s.step(budget)
                while step.effect is not None:  # LEAVE: done, as the front end would
                    out += step.data
                    step = s.resume(Result.OK, budget)
                assert not step.close
                out += step.data
                if not step.data:
                    break
        return out

    whole = drive([stream], 1 << 62)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    budget = data.draw(st.integers(1, 100_000))
    assert drive(chunks, budget) == whole
    assert whole.count(b"PONG") + whole.count(b"RESULT") + whole.count(b"ERR") + \
        whole.count(b"ACK") == len(requests)
