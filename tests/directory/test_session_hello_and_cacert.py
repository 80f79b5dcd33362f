"""``HELLO 0 eurechat/2`` and ``CACERT 0`` in the sans-IO session (SPEC §5.2-§5.3):
the second dialect changes only QUERY lines, and only in its own session."""

from __future__ import annotations

import pytest

from eurechat.directory.interfaces import Registration
from eurechat.directory.session import Authenticate, Result, Session, SessionConfig, State

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
REGS = {"bob": Registration("bob", "127.0.0.1", 5555),
        "amy": Registration("amy", "127.0.0.2", 6000)}


def F(type_: bytes, body: bytes) -> bytes:
    return b"%s %d\n%s" % (type_, len(body), body)


def query(name=None):
    if name is not None:
        return (REGS[name],) if name in REGS else ()
    return sorted(REGS.values())


def session(**config) -> Session:
    return Session(SessionConfig(ca_pem=PEM, **config), query, "127.0.0.1")


def login(s: Session) -> None:
    assert s.feed(b"USER 0 amy\n").data == F(b"ACK", b"hi amy, authentication required")
    out = s.feed(b"PASS 0 password1\n")
    assert out.effect == Authenticate("amy", b"password1")
    assert s.resume(Result.OK).data == F(b"ACK", b"successfully authenticated")


def test_hello_is_acknowledged_with_the_version():
    s = session()
    assert s.feed(b"HELLO 0 eurechat/2\n").data == b"ACK 10\neurechat/2"
    assert s.state is State.NEW and s.v2


def test_after_hello_query_lines_have_a_fourth_field():
    s = session()
    s.feed(b"HELLO 0 eurechat/2\n")
    login(s)
    assert s.feed(b"QUERY 0 bob\n").data == F(b"RESULT", b"bob,127.0.0.1,5555,")
    assert s.feed(b"QUERY 0\n").data == F(b"RESULT", b"amy,127.0.0.2,6000,\nbob,127.0.0.1,5555,")
    assert s.feed(b"QUERY 0 nobody\n").data == b"RESULT 0\n"


def test_without_hello_every_byte_is_as_before_even_after_a_v2_session():
    v2 = session()
    v2.feed(b"HELLO 0 eurechat/2\n")
    login(v2)
    v2.feed(b"QUERY 0 bob\nQUERY 0\n")  # fills the shared frame caches of the dialect
    s = session()
    login(s)
    assert s.feed(b"QUERY 0 bob\n").data == F(b"RESULT", b"bob,127.0.0.1,5555")
    assert s.feed(b"QUERY 0\n").data == F(b"RESULT", b"amy,127.0.0.2,6000\nbob,127.0.0.1,5555")
    # ... and the v2 session still gets its own lines from the caches.
    assert v2.feed(b"QUERY 0 bob\n").data == F(b"RESULT", b"bob,127.0.0.1,5555,")


def test_an_unknown_version_is_an_error_that_keeps_the_session():
    s = session()
    out = s.feed(b"HELLO 0 eurechat/9\n")
    assert out.data == F(b"ERR", b"unsupported protocol eurechat/9: this directory speaks "
                                  b"eurechat/2") and not out.close
    assert not s.v2 and s.state is State.NEW
    assert s.feed(b"HELLO 0 eurechat/2\n").data == b"ACK 10\neurechat/2"


@pytest.mark.parametrize("when", ["new", "auth", "ready"])
def test_cacert_in_any_state(when):
    s = session()
    if when == "auth":
        s.feed(b"USER 0 amy\n")
    elif when == "ready":
        login(s)
    before = s.state
    out = s.feed(b"CACERT 0\n")
    assert out.data == F(b"RESULT", PEM) and not out.close
    assert s.state is before


def test_cacert_without_an_identity_is_an_error():
    s = Session(SessionConfig(), query, "127.0.0.1")
    out = s.feed(b"CACERT 0\n")
    assert out.data == F(b"ERR", b"this directory has no TLS identity") and not out.close


def test_hello_after_login_is_not_understood():
    s = session()
    login(s)
    out = s.feed(b"HELLO 0 eurechat/2\n")
    assert out.close and out.data == F(b"ERR", b"I did not understand the message HELLO")
