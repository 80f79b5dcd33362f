"""Peer-to-peer links are TLS (SPEC §5.1): asyncio Peers given each other's
address, real sockets, real TLS.  The listener's certificate is not checked
yet (it is self-signed): these links are encrypted, not authenticated.  A
listener without TLS (a seed peer) is dialled in plaintext only where the
dialler's ``plaintext`` policy allows its address."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import List

from eurechat.errors import ProtocolError
from eurechat.framing import Decoder, Message
from eurechat.peer import IncomingMessage, Peer, Timings
from support.relay import Relay

FAST = Timings(retry_base=0.02, retry_max=0.1, query_ttl=0.05, directory_wait=0,
               connect_timeout=2.0)
SECRET = "the text nobody on the path may read"


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Got(list):
    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def __call__(self, m: IncomingMessage) -> None:
        self.append(m)
        self.changed.set()

    async def count(self, n: int, timeout: float = 20.0) -> None:
        async def wait():
            while len(self) < n:
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), timeout)


def make(tmp: Path, name: str, got=None, **kw) -> Peer:
    return Peer(name, data_dir=tmp / name, timings=FAST, on_message=got, **kw)


def test_a_message_crosses_a_tap_encrypted(tmp_path):
    """bob refuses plaintext altogether; alice reaches him through a relay
    that records everything: the message arrives, the relay saw TLS only."""
    async def main():
        got = Got()
        bob = make(tmp_path, "bob", got, plaintext="off")
        await bob.start()
        with Relay(bob.address) as tap:
            alice = make(tmp_path, "alice", addresses={"bob": tap.address})
            await alice.start()
            try:
                await alice.send("bob", SECRET)
                await got.count(1)
                assert await alice.wait_idle(10)          # bob's ACK came back
                assert got[0].text == SECRET and got[0].sender == "alice"
                up, down = tap.captured
            finally:
                await alice.close()
                await bob.close()
        assert up.startswith(b"\x16\x03") and down
        for data in (up, down):
            assert SECRET.encode() not in data
            assert b"MESSAGE" not in data and b"alice" not in data
    run(main())


class PlaintextListener:
    """A listener without TLS that acknowledges eurechat MESSAGEs (a seed
    peer's transport).  ``chunks``: what each connection sent first."""

    def __init__(self) -> None:
        self.first: List[bytes] = []
        self.messages: List[Message] = []
        self.changed = asyncio.Event()

    async def start(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[:2]

    async def _serve(self, reader, writer):
        dec = Decoder()
        first = True
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                if first:
                    self.first.append(data)
                    first = False
                    self.changed.set()
                for m in dec.feed(data):
                    self.messages.append(m)
                    self.changed.set()
                    if m.type == "MESSAGE":
                        writer.write(bytes(Message("ACK", m.args[1:])))
        except (ProtocolError, OSError):
            return
        finally:
            writer.close()

    async def wait(self, pred, timeout: float = 20.0):
        async def loop():
            while not pred(self):
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(loop(), timeout)

    def close(self):
        self.server.close()


def test_a_listener_without_tls_is_dialled_in_plaintext_on_loopback(tmp_path):
    async def main():
        seed = PlaintextListener()
        addr = await seed.start()
        alice = make(tmp_path, "alice", addresses={"bob": addr})
        await alice.start()
        try:
            await alice.send("bob", "hello seed")
            assert await alice.wait_idle(20)
            assert [m.payload for m in seed.messages if m.type == "MESSAGE"] == [b"hello seed"]
            assert seed.first[0].startswith(b"\x16\x03")      # TLS was tried first
        finally:
            await alice.close()
            seed.close()
    run(main())


def test_plaintext_off_never_dials_a_listener_without_tls_in_plaintext(tmp_path):
    async def main():
        seed = PlaintextListener()
        addr = await seed.start()
        alice = make(tmp_path, "alice", addresses={"bob": addr}, plaintext="off")
        await alice.start()
        try:
            await alice.send("bob", "stays queued")
            await seed.wait(lambda s: len(s.first) >= 3)        # it keeps trying...
            assert seed.messages == []                          # ...over TLS only
            assert all(c.startswith(b"\x16\x03") for c in seed.first)
            assert [p["text"] for p in alice.pending()] == ["stays queued"]
        finally:
            await alice.close()
            seed.close()
    run(main())
