"""Peer links between enrolled peers (SPEC §5.4), through the real CLIs and
real TLS: what a peer's listener presents, and whom a dialler accepts."""

from __future__ import annotations

from support.enrol import enrol, v2_session
from support.peers import PASSWORD
from support.waits import request_until


def test_an_enrolled_peer_presents_its_certificate_so_it_is_bound(cluster):
    """The directory's BIND check requires an enrolled user's listener to
    present that user's certificate: with the self-signed one of the
    identity key alone, alice would never be listed."""
    fp = enrol(cluster.directory, cluster.tmp / "peers" / "alice", "alice", PASSWORD)
    alice = cluster.peer("alice", register=False)
    port = alice.events("ready")[0]["listen"].rsplit(":", 1)[1]
    with v2_session(cluster.directory, "querier", PASSWORD, register=True) as c:
        want = f"alice,127.0.0.1,{port},{fp}".encode()
        reply = request_until(c, ("QUERY", "alice"), lambda m: m.payload == want, timeout=20)
    assert reply.payload == want
