"""Faults through the real CLI: Redis or PostgreSQL killed (SIGKILL) under a
running directory, then restarted on the same port and data.

What must hold: requests that need the lost store get
``ERR directory unavailable, retry later``; sessions stay open (a PING still
gets its PONG); the directory reconnects by itself; nothing Redis kept is
lost."""

from __future__ import annotations

import pytest

from eurechat.framing import Message
from support.client import FramedClient, Responder
from support.processes import start_directory
from support.waits import PW, request_until

UNAVAILABLE = Message("ERR", (), "directory unavailable, retry later")


def alive(client: FramedClient) -> bool:
    return client.request("PING", "still-there") == Message("PONG", ("still-there",))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_redis_killed_while_running(own_redis, workers: str) -> None:
    d = start_directory("--registry", own_redis.url, "--workers", workers,
                        "--check-interval", "3600")
    try:
        with Responder() as peer, FramedClient(*d.address) as c1, \
                FramedClient(*d.address) as c2:
            c1.request("REGISTER", "alice", PW)
            c1.request("REGISTER", "bob", PW)
            c1.login("alice", PW)
            assert c1.request("BIND", "127.0.0.1", str(peer.port)).type == "ACK"
            line = f"alice,127.0.0.1,{peer.port}".encode()
            request_until(c1, ("QUERY",), lambda m: m.payload == line)

            own_redis.kill()
            # The change feed notices; from then on no stale presence is served.
            request_until(c1, ("QUERY",), lambda m: m == UNAVAILABLE)
            assert c1.request("BIND", "127.0.0.1", str(peer.port)) == UNAVAILABLE
            assert alive(c1)
            # Login needs the throttle counters, which are in Redis too.
            c2.request("USER", "bob")
            assert c2.request("PASS", PW) == UNAVAILABLE
            assert alive(c2)

            own_redis.start()  # same port, same append-only file
            request_until(c1, ("QUERY",), lambda m: m.type == "RESULT", timeout=20)
            assert c1.request("QUERY") == Message("RESULT", (), line), "registration lost"
            request_until(c2, ("PASS", PW),
                          lambda m: m == Message("ACK", (), "successfully authenticated"))
            assert c2.request("BIND", "127.0.0.1", str(peer.port)).type == "ACK"
            both = f"alice,127.0.0.1,{peer.port}\nbob,127.0.0.1,{peer.port}".encode()
            # c1 and c2 may be on different workers: c2's BIND reaches c1's via the feed.
            request_until(c1, ("QUERY",), lambda m: m == Message("RESULT", (), both))
    finally:
        assert d.stop() == 0


def test_postgres_killed_while_running(own_pg) -> None:
    dsn = own_pg.create_database()
    d = start_directory("--accounts", dsn, "--check-interval", "3600")
    try:
        with Responder() as peer, FramedClient(*d.address) as c1, \
                FramedClient(*d.address) as c2, FramedClient(*d.address) as c3:
            c1.request("REGISTER", "carol", PW)
            c1.login("carol", PW)

            own_pg.kill()
            c2.request("USER", "carol")
            assert c2.request("PASS", PW) == UNAVAILABLE
            assert alive(c2)
            assert c3.request("REGISTER", "dave", PW) == UNAVAILABLE
            assert alive(c3)
            # Presence does not need the account database.
            assert c1.request("BIND", "127.0.0.1", str(peer.port)).type == "ACK"
            assert c1.request("QUERY", "carol").payload == \
                f"carol,127.0.0.1,{peer.port}".encode()

            own_pg.start()
            # The store reconnects on its own (after its backoff, at most 2 s).
            request_until(c2, ("PASS", PW),
                          lambda m: m == Message("ACK", (), "successfully authenticated"),
                          timeout=20, limit=200_000)
            assert c3.request("REGISTER", "dave", PW) == Message("ACK", (), "account dave created")
    finally:
        assert d.stop() == 0
