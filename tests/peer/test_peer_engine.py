"""The delivery engine in-process: two asyncio Peers given each other's address,
real sockets and real SQLite files, no directory."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from eurechat.framing import Decoder, Message
from eurechat.peer import IncomingMessage, Peer, PeerError, StoreLocked, Timings
from eurechat.peer.store import PeerStore

FAST = Timings(retry_base=0.02, retry_max=0.1, query_ttl=0.05, directory_wait=0)


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Got(list):
    """Messages shown by a peer; ``await got.count(n)`` waits for the n-th."""

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


def test_pipelined_transfer_in_order_and_events(tmp_path):
    async def main():
        got = Got()
        events = []
        b = make(tmp_path, "bob", got)
        await b.start()
        a = make(tmp_path, "alice", addresses={"bob": b.address}, on_event=events.append)
        await a.start()
        ids = [a.send_nowait("bob", f"m{i}")[0] for i in range(3000)]
        assert await a.wait_idle(30)
        await got.count(3000)
        assert [m.text for m in got] == [f"m{i}" for i in range(3000)]
        assert [m.msgid for m in got] == ids
        queued = [e["id"] for e in events if e["event"] == "queued"]
        delivered = [e["id"] for e in events if e["event"] == "delivered"]
        assert queued == ids and delivered == ids
        assert a.pending() == []
        assert await a.ping("bob") >= 0
        await a.close()
        await b.close()
    run(main())


def test_queue_survives_restart_and_receiver_dedupes(tmp_path):
    async def main():
        # bob's address is known but nobody listens there yet.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        a = make(tmp_path, "alice", addresses={"bob": ("127.0.0.1", port)})
        await a.start()
        ids = [await a.send(["bob"], f"q{i}") for i in range(20)]
        assert [p["id"] for p in a.pending()] == ids
        await a.close()
        # Restart alice: the queue is still there, in order.
        a = make(tmp_path, "alice", addresses={"bob": ("127.0.0.1", port)})
        await a.start()
        assert [p["text"] for p in a.pending()] == [f"q{i}" for i in range(20)]
        got = Got()
        b = make(tmp_path, "bob", got, listen=("127.0.0.1", port))
        await b.start()
        await got.count(20)
        assert await a.wait_idle(10)
        assert [m.text for m in got] == [f"q{i}" for i in range(20)]
        await a.close()
        await b.close()
    run(main())


def test_duplicates_are_acked_again_and_not_shown(tmp_path):
    async def main():
        got = Got()
        b = make(tmp_path, "bob", got)
        await b.start()
        r, w = await asyncio.open_connection(*b.address)
        w.write(b"MESSAGE 2 zed id1\nhi" * 3)
        dec = Decoder()
        acks = []
        while len(acks) < 3:
            acks += dec.feed(await r.read(100))
        assert acks == [Message("ACK", ("id1",))] * 3
        await got.count(1)
        assert got[0][:3] == ("zed", "id1", "hi")
        w.close()
        await b.close()
        # Restart: already shown, so not shown again; a repeat is still recognised.
        got2 = Got()
        b = make(tmp_path, "bob", got2)
        await b.start()
        r, w = await asyncio.open_connection(*b.address)
        w.write(b"MESSAGE 2 zed id1\nhi")
        assert Decoder().feed(await r.read(100)) == [Message("ACK", ("id1",))]
        assert got2 == []  # the ACK follows the commit and the (skipped) show
        w.close()
        await b.close()
    run(main())


def test_recorded_but_unshown_messages_come_at_next_start(tmp_path):
    store = PeerStore(tmp_path / "bob", "bob")
    with store.transaction():
        s1 = store.record_incoming("alice", "a1", "one", 0.0)
        s2 = store.record_incoming("alice", "a2", "two", 0.0)
        assert store.record_incoming("alice", "a1", "one", 0.0) is None
    store.mark_shown(s1)
    store.close()

    async def main():
        b = Peer("bob", data_dir=tmp_path / "bob", timings=FAST)
        await b.start()
        it = b.messages()
        m = await it.__anext__()
        assert m == IncomingMessage("alice", "a2", "two", s2)
        await b.close()
    run(main())


def test_simultaneous_dial_settles_on_one_connection(tmp_path):
    async def main():
        ga, gb = Got(), Got()
        a = make(tmp_path, "alice", ga)
        b = make(tmp_path, "bob", gb)
        await a.start()
        await b.start()
        a.addresses["bob"] = b.address
        b.addresses["alice"] = a.address
        for i in range(200):
            a.send_nowait("bob", f"a{i}")
            b.send_nowait("alice", f"b{i}")
        assert await a.wait_idle(20) and await b.wait_idle(20)
        await ga.count(200)
        await gb.count(200)
        assert [m.text for m in gb] == [f"a{i}" for i in range(200)]
        assert [m.text for m in ga] == [f"b{i}" for i in range(200)]
        # Both sides send over one and the same TCP connection.
        ca, cb = a._routes["bob"].conn, b._routes["alice"].conn
        assert ca.transport.get_extra_info("sockname") == cb.transport.get_extra_info("peername")
        assert ca.dialled  # alice < bob: the connection alice dialled wins
        await a.close()
        await b.close()
    run(main())


def test_api_errors(tmp_path):
    async def main():
        a = make(tmp_path, "alice")
        with pytest.raises(PeerError):
            a.send_nowait("bob", "not started")
        await a.start()
        with pytest.raises(PeerError):
            a.send_nowait("-bad", "x")
        with pytest.raises(PeerError, match="yourself"):
            a.send_nowait("alice", "x")
        with pytest.raises(PeerError):
            a.send_nowait("bob", "x" * (1024 * 1024 + 1))
        with pytest.raises(StoreLocked):
            await make(tmp_path, "alice").start()
        with pytest.raises(PeerError):
            await a.ping("nobody")
        await a.close()
    run(main())


def test_seed_peer_bare_ack_is_accepted(tmp_path):
    """A seed peer answers ``ACK 0``: the oldest unacknowledged message is done."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]

        async def main():
            a = make(tmp_path, "alice", addresses={"seed": ("127.0.0.1", port)})
            await a.start()
            loop = asyncio.get_running_loop()
            await a.send("seed", "one")
            await a.send("seed", "two")
            conn, _ = await loop.sock_accept(srv)
            conn.setblocking(False)
            dec = Decoder()
            msgs = []
            while len(msgs) < 2:
                msgs += dec.feed(await loop.sock_recv(conn, 4096))
            assert [m.type for m in msgs] == ["MESSAGE", "MESSAGE"]
            assert msgs[0].args[0] == "alice" and msgs[0].payload == b"one"
            await loop.sock_sendall(conn, b"ACK 0\nACK 0\n")
            assert await a.wait_idle(10)
            conn.close()
            await a.close()
        run(main())


def test_a_frame_left_unfinished_is_cut_off(tmp_path):
    async def main():
        timings = Timings(frame_timeout=0.2)
        b = Peer("bob", data_dir=tmp_path / "bob", timings=timings)
        await b.start()
        r, w = await asyncio.open_connection(*b.address)
        w.write(b"MESSAGE 100 zed id1\nonly part of it")
        assert await asyncio.wait_for(r.read(), 10) == b""   # closed by bob
        # A connection that finishes its frames is not touched.
        r, w = await asyncio.open_connection(*b.address)
        w.write(b"PING 0 x\n")
        assert await r.readexactly(9) == b"PONG 0 x\n"
        w.close()
        await b.close()
    run(main())


def test_a_dialled_connection_reset_at_once_does_not_stall_the_route(tmp_path):
    """Regression: a connection we dialled that the remote resets at once (a
    listener dying with our connection in its accept queue, e.g. a recipient
    killed just as we redial it) could be lost before the dialling coroutine
    resumed.  The route then adopted the already-closed connection as its own
    and, since it "had a connection", never dialled again: everything queued
    for that recipient stalled until a restart, whatever the directory said.

    Here a listening socket watched by alice's own event loop accepts and
    resets (RST) each connection the moment it is queued, so the reset is
    there before alice's dial completes; after ``resets`` of them bob's real
    address is given to alice, and what she queued must reach him."""
    import struct

    resets = 40

    async def main():
        loop = asyncio.get_running_loop()
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(128)
        ls.setblocking(False)
        done = loop.create_future()
        count = [0]

        def reset_queued() -> None:
            while True:
                try:
                    c, _ = ls.accept()
                except BlockingIOError:
                    return
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # Reset it a few turns of the loop later (a different number
                # each time): too early and alice's connect() itself fails
                # (the ordinary path); the window that stalled is the few
                # turns between her connect() succeeding and her dialling
                # coroutine resuming.
                reset_later(c, count[0] % 8)
                count[0] += 1

        def reset_later(c: socket.socket, hops: int) -> None:
            if hops:
                loop.call_soon(reset_later, c, hops - 1)
                return
            c.close()   # RST
            if count[0] >= resets and not done.done():
                done.set_result(None)

        loop.add_reader(ls.fileno(), reset_queued)
        got = Got()
        b = Peer("bob", data_dir=tmp_path / "bob", timings=FAST, on_message=got)
        await b.start()
        a = Peer("alice", data_dir=tmp_path / "alice", timings=FAST,
                 addresses={"bob": ls.getsockname()})
        await a.start()
        try:
            await a.send("bob", "hello")
            try:
                await asyncio.wait_for(done, 10)
            except asyncio.TimeoutError:
                raise AssertionError(f"alice stopped dialling bob after {count[0]} reset "
                                     "connection(s)") from None
            a.addresses["bob"] = b.address
            await got.count(1)
            assert [m.text for m in got] == ["hello"]
            assert await a.wait_idle(20)
        finally:
            loop.remove_reader(ls.fileno())
            ls.close()
            await a.close()
            await b.close()

    run(main())
