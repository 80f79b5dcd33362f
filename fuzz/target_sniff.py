"""Fuzz target: which transport a new connection gets (SPEC §5.1):
``eurechat.tls.sniff.decide`` and the plaintext policy behind it.

The first bytes a client sends, its source address (one of the forms
``getpeername`` gives, or fuzzer-chosen text) and the policy go in; the
verdict must follow the rules whatever the text: no first byte is CLOSED, a
first byte 0x16 is TLS under every policy, plaintext is served under ``on``,
never under ``off``, and under ``loopback`` only to 127.0.0.0/8, ``::1`` and
IPv4-mapped 127.x (with or without a scope); nothing raises.  The real
accept path, TLS handshakes included, is fuzzed by the ``server`` target.

Input layout (``seed()`` writes it): byte 0 the policy (off, loopback, on:
n % 3); byte 1 the source: below 0x80 one of ``SOURCES`` (n % len), else a
length byte follows and that many bytes of text; the rest are the first bytes.
"""

from __future__ import annotations

import socket
import sys

import common
from common import Reader, check

common.instrumented_imports(["eurechat.tls.sniff", "eurechat.tls.policy"])

from eurechat.tls.policy import Plaintext  # noqa: E402
from eurechat.tls.sniff import TLS_RECORD, Verdict, decide  # noqa: E402

POLICIES = [Plaintext.OFF, Plaintext.LOOPBACK, Plaintext.ON]
#: (source as getpeername may give it, whether it is this machine's loopback)
SOURCES = [("127.0.0.1", True), ("127.255.255.254", True), ("::1", True),
           ("::ffff:127.0.0.1", True), ("::1%lo", True), ("10.0.0.1", False),
           ("::ffff:10.0.0.1", False), ("0.0.0.0", False), ("::", False),
           ("fe80::1%eth0", False), ("128.0.0.1", False), ("", False),
           ("localhost", False), ("127.0.0.1.evil", False), ("::2", False)]


def loopback_by_inet_pton(text: str) -> bool:
    """An oracle independent of ``ipaddress``: the C library's reading of the
    address (scope dropped), then the loopback ranges by their bytes."""
    head = text.split("%", 1)[0]
    try:
        return socket.inet_pton(socket.AF_INET, head)[0] == 127
    except (OSError, ValueError):
        pass
    try:
        raw = socket.inet_pton(socket.AF_INET6, head)
    except (OSError, ValueError):
        return False
    return raw == bytes(15) + b"\x01" or (raw[:12] == bytes(10) + b"\xff\xff" and raw[12] == 127)


def seed(first: bytes, policy: int = 1, source: int = 0) -> bytes:
    return bytes([policy, source]) + first


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris calls
    r = Reader(data)
    policy = POLICIES[r.byte() % 3]
    code = r.byte()
    if code < 0x80:
        source, loopback = SOURCES[code % len(SOURCES)]
    else:
        source, loopback = r.take(r.byte()).decode("utf-8", "replace"), None
    first = r.rest()
    verdict = decide(first, source, policy)
    if not first:
        check(verdict is Verdict.CLOSED, f"{verdict} for no bytes")
    elif first[0] == TLS_RECORD:
        check(verdict is Verdict.TLS, f"{verdict} for a TLS record from {source!r}")
    elif policy is Plaintext.ON:
        check(verdict is Verdict.PLAINTEXT, f"{verdict} under 'on'")
    elif policy is Plaintext.OFF:
        check(verdict is Verdict.REFUSE, f"plaintext served under 'off' to {source!r}")
    elif loopback is not None:
        expected = Verdict.PLAINTEXT if loopback else Verdict.REFUSE
        check(verdict is expected, f"{verdict} for {source!r} under 'loopback'")
    else:
        expected = Verdict.PLAINTEXT if loopback_by_inet_pton(source) else Verdict.REFUSE
        check(verdict is expected, f"{verdict} for {source!r} under 'loopback'")

if __name__ == "__main__":
    common.main(TestOneInput, sys.argv)
