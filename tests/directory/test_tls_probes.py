"""The directory reaches peers over the transport they listen with:
registrations made after ``HELLO 0 eurechat/2`` are BIND-checked and
liveness-probed over TLS; seed peers and ``nc`` listeners in plaintext.  Through the real CLI, with ``--workers 1`` and ``--workers 2``
(the Manager carries the flag), and over Redis (its value carries it)."""

from __future__ import annotations

import pytest

from eurechat.directory.interfaces import Registration
from eurechat.directory.presence.redis import _parse, _value
from eurechat.framing import Message
from support.client import FramedClient, Responder
from support.processes import run_directory
from support.tls import listener_context, unverified


def bind(d, name: str, port: int, v2: bool, tls_session: bool) -> Message:
    with FramedClient(*d.address, tls=unverified() if tls_session else None) as c:
        if v2:
            assert c.request("HELLO", "eurechat/2") == Message("ACK", (), "eurechat/2")
        assert c.request("REGISTER", name, f"password-{name}").type == "ACK"
        c.login(name, f"password-{name}")
        return c.request("BIND", "127.0.0.1", str(port))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_eurechat2_listeners_are_checked_and_probed_over_tls(tmp_path, workers):
    ctx = listener_context(str(tmp_path / "listener"))
    with run_directory("--check-interval", "0.3", "--probe-timeout", "2",
                       "--workers", workers, data_dir=str(tmp_path / "d")) as d, \
            Responder(tls=ctx) as tls_peer, Responder() as seed_peer, \
            Responder() as plain_v2:
        ok = Message("ACK", (), f"bound successfully to 127.0.0.1:{tls_peer.port}")
        assert bind(d, "neo", tls_peer.port, v2=True, tls_session=True) == ok
        assert bind(d, "seed", seed_peer.port, v2=False, tls_session=False).type == "ACK"
        # An eurechat/2 session's BIND to a plaintext listener fails its TLS check.
        assert bind(d, "odd", plain_v2.port, v2=True, tls_session=False) == Message(
            "ERR", (), "invalid bind notification")
        d.wait_for_log(r"BIND 127\.0\.0\.1:\d+ of 'odd' refused: TLS handshake failed")
        # Rounds go by; both kinds answer their probes, nobody is removed.
        mark = len(d.err_lines)
        d.wait_for_log(r"liveness round \d+: 2 probed, 0 removed", start=mark)
        mark = len(d.err_lines)
        d.wait_for_log(r"liveness round \d+: 2 probed, 0 removed", start=mark)
        assert (tls_peer.pings, seed_peer.pings) >= (2, 2), (tls_peer.pings, seed_peer.pings)
        with FramedClient(*d.address) as q:  # QUERY lines do not show the transport
            q.login("seed", "password-seed")
            assert q.request("QUERY").text == (f"neo,127.0.0.1,{tls_peer.port}\n"
                                               f"seed,127.0.0.1,{seed_peer.port}")
        with FramedClient(*d.address, tls=unverified()) as q:  # eurechat/2: a fourth field
            assert q.request("HELLO", "eurechat/2").type == "ACK"
            q.login("seed", "password-seed")
            assert q.request("QUERY", "neo").text == f"neo,127.0.0.1,{tls_peer.port},"
        tls_peer.close()
        d.wait_for_log(r"removed neo \(127\.0\.0\.1:\d+\): connect failed")


def test_the_flag_survives_the_redis_value():
    for reg in (Registration("a", "127.0.0.1", 5555), Registration("b", "::1", 6000, True)):
        assert _parse(reg.name, _value(reg)) == reg
    assert _value(Registration("a", "10.0.0.1", 7)) == "10.0.0.1,7"  # as before HELLO existed
    assert _parse("a", "10.0.0.1,7").tls is False
