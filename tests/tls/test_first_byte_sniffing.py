"""One port, two transports (SPEC §5.1): the decision on the first byte, and
the rationed log of failed handshakes -- without sockets."""

from __future__ import annotations

import logging

import pytest

from eurechat.tls.policy import Plaintext
from eurechat.tls.sniff import TLS_REQUIRED, FailureLog, Verdict, decide


def test_refusal_is_exactly_the_spec_bytes():
    assert TLS_REQUIRED == b"ERR 12\nTLS required"


@pytest.mark.parametrize("policy", list(Plaintext))
@pytest.mark.parametrize("source", ["127.0.0.1", "10.1.2.3", "::1"])
def test_a_handshake_record_is_tls_under_every_policy(policy, source):
    assert decide(b"\x16", source, policy) is Verdict.TLS
    assert decide(b"\x16\x03\x01\x02\x00", source, policy) is Verdict.TLS


@pytest.mark.parametrize("first", [b"U", b"P", b"Q", b"\x00", b"\x15", b"\x17", b"\xff", b"\n"])
def test_anything_else_is_plaintext_where_allowed(first):
    assert decide(first, "127.0.0.1", Plaintext.LOOPBACK) is Verdict.PLAINTEXT
    assert decide(first, "::ffff:127.0.0.1", Plaintext.LOOPBACK) is Verdict.PLAINTEXT
    assert decide(first, "10.1.2.3", Plaintext.ON) is Verdict.PLAINTEXT
    assert decide(first, "10.1.2.3", Plaintext.LOOPBACK) is Verdict.REFUSE
    assert decide(first, "127.0.0.1", Plaintext.OFF) is Verdict.REFUSE


def test_end_of_stream_before_any_byte():
    for policy in Plaintext:
        assert decide(b"", "127.0.0.1", policy) is Verdict.CLOSED


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_handshakes_are_one_warning_then_summaries(caplog):
    clock = Clock()
    logger = logging.getLogger("eurechat.test.failures")
    flog = FailureLog("TLS handshake failed", interval=10.0, clock=clock, logger=logger)
    with caplog.at_level(logging.WARNING, logger="eurechat.test.failures"):
        flog.failure("10.0.0.1", "wrong version number")
        for i in range(500):  # a flood within the interval: counted, not logged
            clock.now += 0.01
            flog.failure(f"10.0.0.{i % 250}", "bad record")
        assert len(caplog.records) == 1
        assert "10.0.0.1: wrong version number" in caplog.records[0].getMessage()
        clock.now += 10.0
        flog.failure("10.9.9.9", "timeout")
        assert len(caplog.records) == 2
        summary = caplog.records[1].getMessage()
        assert "501 in the last" in summary and "(501 in all)" not in summary
        assert "502 in all" in summary and "10.9.9.9: timeout" in summary
        # Quiet afterwards: nothing new to say.
        flog.flush()
        assert len(caplog.records) == 2
        # A failure within the interval is held and written by flush (the timer's job).
        clock.now += 1.0
        flog.failure("10.0.0.7", "eof")
        assert len(caplog.records) == 2
        flog.flush()
        assert len(caplog.records) == 3 and "1 in the last" in caplog.records[2].getMessage()
