"""The seed course's directory still works as a directory (SPEC §5.4, last
point): a peer that finds no TLS there falls back to plaintext where
``--plaintext`` allows it, says so once, and speaks exactly the seed's
dialect.  Real peer processes against a stand-in that accepts exactly the
seed's grammar (``support.seed_directory``)."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from eurechat.framing import Message
from eurechat.peer.directory_client import DirectoryClient
from eurechat.tls.policy import Plaintext
from eurechat.tls.trust import KnownDirectories
from support.certs import make_ca
from support.peers import FAST, PeerProc, peer_cmd
from support.processes import start_process, test_env
from support.seed_directory import SeedDirectory

SEED_TYPES = {"USER", "PASS", "BIND", "QUERY", "LEAVE", "PING", "PONG"}
FALLBACK = "does not answer TLS: using plaintext and the seed dialect"
#: One argument: what a seed directory can take.
PASSWORD = "seed-password-1"


@pytest.fixture
def seed():
    s = SeedDirectory({"alice": PASSWORD, "bob": PASSWORD})
    try:
        yield s
    finally:
        s.close()


def start_peer(tmp_path, procs, seed, name, *extra):
    argv = peer_cmd() + ["--user", name, "--directory", seed.hostport,
                         "--data-dir", str(tmp_path / name), "--json", *extra]
    proc = start_process(argv, ready=r'"event": "ready"',
                         env=test_env(EURECHAT_PASSWORD=PASSWORD, **FAST),
                         stdin=subprocess.PIPE, timeout=30)
    procs.append(proc)
    return PeerProc(proc)


@pytest.fixture
def procs():
    out = []
    try:
        yield out
    finally:
        for p in out:
            p.stop(timeout=5)


def test_login_bind_who_and_a_message_through_a_seed_directory(tmp_path, seed, procs):
    alice = start_peer(tmp_path, procs, seed, "alice", "--register")
    bob = start_peer(tmp_path, procs, seed, "bob")
    who = alice.who_until(lambda e: {u["name"] for u in e["users"]} == {"alice", "bob"})
    ports = {u["name"]: u["port"] for u in who["users"]}
    assert ports["bob"] == int(bob.events("ready")[0]["listen"].rsplit(":", 1)[1])

    alice.cmd("/msg bob hello over the seed directory")
    got = bob.wait_event("message")
    assert got["from"] == "alice" and got["text"] == "hello over the seed directory"
    alice.wait_event("delivered", to="bob")

    for p in (alice, bob):
        # Said once, on stderr (stdout is the SPEC's events).
        assert p.p.stderr().count(FALLBACK) == 1, p.p.stderr()
    assert "has no registration" in alice.p.stderr()
    # Exactly the seed's grammar: each understood request is one of its
    # commands, the password always one argument, never a payload.
    assert {m.type for m in seed.requests} <= SEED_TYPES, seed.requests
    passes = [m for m in seed.requests if m.type == "PASS"]
    assert len(passes) == 2 and all(m.args == (PASSWORD,) and not m.payload for m in passes)
    assert [m.args for m in seed.requests if m.type == "USER"] == [("alice",), ("bob",)]
    # What it refused: only the TLS ClientHellos, one per peer.
    assert seed.errors == ["garbage in state new"] * 2, seed.errors
    assert all(c.startswith(b"\x16") for c in seed.chunks if not c[:1].isalpha())


def test_plaintext_off_sends_nothing_but_tls_to_a_seed_directory(tmp_path, seed, procs):
    alice = start_peer(tmp_path, procs, seed, "alice", "--plaintext", "off")
    err = alice.wait_event("error")
    assert "--plaintext off does not allow plaintext" in err["text"], err
    # It keeps trying, and every try is a TLS handshake and nothing else.
    seed.wait(lambda s: len(s.chunks) >= 3, "three connection attempts")
    assert seed.requests == []
    assert all(c.startswith(b"\x16\x03") for c in seed.chunks), seed.chunks
    assert PASSWORD.encode() not in seed.received()
    assert FALLBACK not in alice.p.stderr()


def test_requests_to_a_seed_directory_go_one_at_a_time(seed):
    """The seed reads one request per read: twenty QUERYs asked at once are
    written one after the other's answer, and all are answered."""
    async def main() -> None:
        client = DirectoryClient(seed.host, seed.port, "alice", PASSWORD,
                                 listen=lambda: ("127.0.0.1", 4000),
                                 plaintext=Plaintext.LOOPBACK)
        try:
            assert await client.start() is True
            assert client.seed
            answers = await asyncio.wait_for(
                asyncio.gather(*(client.request(Message("QUERY", ())) for _ in range(20))), 20)
            assert [a.type for a in answers] == ["RESULT"] * 20
            assert client.online
        finally:
            await client.close()

    asyncio.run(main())
    assert seed.errors == ["garbage in state new"]
    assert [m.type for m in seed.requests].count("QUERY") == 20


def test_a_password_that_is_not_one_argument_is_not_sent_to_a_seed_directory():
    """A password with a space cannot be ``PASS 0 <password>``; the seed
    dialect has no other form: the login fails, and nothing of it is sent."""
    from eurechat.peer.directory_client import AuthFailed

    with SeedDirectory({"alice": "two words"}) as seed:
        async def main() -> None:
            client = DirectoryClient(seed.host, seed.port, "alice", "two words",
                                     listen=lambda: ("127.0.0.1", 4000))
            try:
                with pytest.raises(AuthFailed, match="cannot be sent to a seed directory"):
                    await client.start()
            finally:
                await client.close()

        asyncio.run(main())
        assert b"two words" not in seed.received()
        assert [m.type for m in seed.requests] == ["USER"]


def test_a_pinned_directory_is_never_spoken_to_in_plaintext(tmp_path, seed, procs):
    """A directory pinned to a TLS identity that now answers plaintext (or
    whose TLS handshakes someone resets) is not downgraded, even on loopback:
    the peer keeps trying TLS and sends no login."""
    KnownDirectories(tmp_path / "alice").add(seed.hostport, make_ca().cert_pem)
    alice = start_peer(tmp_path, procs, seed, "alice")
    err = alice.wait_event("error")
    assert "pinned to a TLS identity" in err["text"], err
    seed.wait(lambda s: len(s.chunks) >= 3, "three connection attempts")
    assert seed.requests == []
    assert all(c.startswith(b"\x16\x03") for c in seed.chunks), seed.chunks
    assert FALLBACK not in alice.p.stderr()
