"""The delivery engine in-process: two asyncio Peers given each other's address,
real sockets and real SQLite files, no directory."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from eurechat.framing import Decoder, Message
from eurechat.peer import IncomingMessage, Peer, PeerError, StoreLocked, Timings
from eurechat.peer.directory_client import DirectoryClient
from eurechat.peer.store import PeerStore
from eurechat.tls.trust import DirectoryTrust
from support.certs import directory_pki
from support.peers import PASSWORD

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
        srv.setblocking(False)
        port = srv.getsockname()[1]

        async def main():
            a = make(tmp_path, "alice", addresses={"seed": ("127.0.0.1", port)})
            await a.start()
            loop = asyncio.get_running_loop()
            await a.send("seed", "one")
            await a.send("seed", "two")
            # TLS is tried first: a listener without it (as a seed peer's)
            # closes, and is dialled again in plaintext (loopback allows it).
            conn, _ = await loop.sock_accept(srv)
            conn.setblocking(False)
            assert (await loop.sock_recv(conn, 4096))[:1] == b"\x16"
            conn.close()
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
    """A connection we dialled that the remote resets at once (a listener
    dying with our connection in its accept queue, e.g. a recipient killed
    just as we redial it) can be lost before the dialling coroutine resumes.
    A route that adopted the already-closed connection as its own would,
    since it "had a connection", never dial again: everything queued for
    that recipient would stall until a restart, whatever the directory said.

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
        # A tiny backoff: connections lost before bob ACKed anything back off
        # like failed dials (see the next test), and 40 of them at FAST's
        # 0.1 s cap would make this test slow, not stronger.
        a = Peer("alice", data_dir=tmp_path / "alice",
                 timings=Timings(retry_base=0.001, retry_max=0.004, directory_wait=0),
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


class Slammer:
    """A real listening socket that accepts, reads the caller's identification
    (the header line of its first MESSAGE) and closes at once: a recipient's
    address that takes connections but never keeps one (a crashing peer, a
    proxy, a port reused by something else).  ``times`` holds when each
    identification arrived; ``await reached(n)`` waits for the n-th."""

    def __init__(self) -> None:
        self.times: list = []
        self.changed = asyncio.Event()
        self.server = None

    async def start(self) -> tuple:
        # A TLS listener, as an eurechat peer's: the directory's BIND check of
        # a session that said HELLO completes a TLS handshake.
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0,
                                                 ssl=directory_pki()[0])
        return self.server.sockets[0].getsockname()[:2]

    async def _serve(self, reader, writer) -> None:
        try:
            line = await reader.readline()
            if line.startswith(b"MESSAGE "):   # not the directory's BIND check
                self.times.append(time.monotonic())
                self.changed.set()
        finally:
            writer.close()

    async def reached(self, n: int, timeout: float = 20.0) -> None:
        async def wait():
            while len(self.times) < n:
                self.changed.clear()
                await self.changed.wait()
        try:
            await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"only {len(self.times)} dial(s) in {timeout} s") from None

    def close(self) -> None:
        self.server.close()


def _assert_backed_off(times: list, min_gap: float) -> None:
    """Dials 1 and 2 may be back to back (a connection that was fine until it
    dropped is redialled at once); every later one waits at least the jittered
    backoff, ``min_gap``.  So n dials need at least (n - 2) * min_gap seconds;
    one dial of slack for connect latency.  (A spinning route dials
    thousands of times per second, all within a few milliseconds.)"""
    n = len(times)
    span = times[-1] - times[0]
    allowed = 3 + int(span / min_gap)
    assert n <= allowed, (f"{n} dials in {span * 1000:.1f} ms; the backoff allows {allowed}: "
                          f"gaps {[round((b - a) * 1000, 1) for a, b in zip(times, times[1:])]} ms")


def test_an_address_that_resets_after_identification_is_dialled_with_backoff(tmp_path):
    """A connection that is accepted and then closed right after our first
    MESSAGE must not reset the backoff (only an ACK does): reset when the
    connection is identified, such an address would be redialled in a tight
    loop (thousands of dials per second).  Afterwards the real recipient
    still gets the message (the route is not stuck)."""
    async def main():
        slam = Slammer()
        addr = await slam.start()
        got = Got()
        b = make(tmp_path, "bob", got)
        await b.start()
        # Constant backoff: each redial waits in [0.05, 0.1] s (jitter).
        a = Peer("alice", data_dir=tmp_path / "alice",
                 timings=Timings(retry_base=0.1, retry_max=0.1, directory_wait=0),
                 addresses={"bob": addr})
        await a.start()
        try:
            await a.send("bob", "hello")
            await slam.reached(10)
            _assert_backed_off(slam.times, 0.05)
            a.addresses["bob"] = b.address
            await got.count(1)
            assert [m.text for m in got] == ["hello"]
            assert await a.wait_idle(20)
            assert a._routes["bob"].attempt == 0   # proven by bob's ACK
        finally:
            slam.close()
            await a.close()
            await b.close()
    run(main())


def test_with_a_directory_lookups_do_not_redial_an_address_that_resets(tmp_path, cluster):
    """The same address, published through a real directory: alice looks bob
    up every ``lookup_interval`` (20 ms here), and each lookup finds the same
    address.  A connection lost before bob ACKed anything counts as a failed
    dial of that address, so those lookups do not redial it before its
    backoff (50-100 ms) has run out."""

    async def main():
        slam = Slammer()
        addr = await slam.start()
        directory = ("127.0.0.1", cluster.dir_port)
        ca = (Path(cluster.dir_data) / "tls" / "ca.crt").read_bytes()
        bob = DirectoryClient(directory[0], directory[1], "bob", PASSWORD,
                              listen=lambda: addr, register=True,
                              trust=DirectoryTrust(ca_pem=ca))
        assert await bob.start()
        a = Peer("alice", PASSWORD, directory=directory, register=True,
                 data_dir=tmp_path / "alice",
                 timings=Timings(retry_base=0.1, retry_max=0.1, lookup_interval=0.02,
                                 query_ttl=0.01, directory_wait=1))
        await a.start()
        try:
            await a.send("bob", "hello")
            await slam.reached(8)
            _assert_backed_off(slam.times, 0.05)
            assert [p["text"] for p in a.pending()] == ["hello"]
        finally:
            slam.close()
            await a.close()
            await bob.close()
    run(main())


def test_the_lookup_cache_forgets_claimed_names_but_not_waiting_recipients(tmp_path, cluster):
    """Each name an incoming connection claims is looked up in the real
    directory (may we send over it?) and cached.  The sweep's prune drops
    such entries once they are ``CACHE_KEEP`` old, so strangers claiming
    names cannot grow the cache for ever; a recipient with a message
    waiting keeps its entry (its last address is the fallback when the
    directory is down)."""

    from eurechat.peer.settings import CACHE_KEEP

    async def main():
        directory = ("127.0.0.1", cluster.dir_port)
        a = Peer("alice", PASSWORD, directory=directory, register=True,
                 data_dir=tmp_path / "alice",
                 timings=Timings(retry_base=60, retry_max=60, directory_wait=1))
        await a.start()
        loop = asyncio.get_running_loop()
        claims = []
        try:
            await a.send("zoe", "for a name with no account")   # waits, looked up
            for i in range(5):
                s = socket.create_connection(a.address, timeout=10)
                claims.append(s)
                s.sendall(bytes(Message("MESSAGE", (f"ghost{i}", f"g{i}"), "boo")))
            want = {"zoe"} | {f"ghost{i}" for i in range(5)}
            deadline = time.monotonic() + 20
            while not want <= set(a._cache):
                assert time.monotonic() < deadline, sorted(a._cache)
                await asyncio.sleep(0.01)
            assert a._prune_cache(loop.time()) == 0          # all fresh
            assert a._prune_cache(loop.time() + CACHE_KEEP + 1) == 5
            assert set(a._cache) == {"zoe"}
        finally:
            for s in claims:
                s.close()
            await a.close()
    run(main())


def test_a_text_that_cannot_be_encoded_is_refused_alone_not_with_its_batch(tmp_path):
    """``send()`` of a str holding a lone surrogate (``os.fsdecode`` of a
    non-UTF-8 file name gives one) is refused on its own, at once: accepted,
    it would fail the whole group commit, and every other message of that
    event-loop turn would be refused as a "storage failure"."""
    import asyncio

    from eurechat.peer import Peer, PeerError

    async def main():
        async with Peer("alice", data_dir=tmp_path, addresses={"bob": ("127.0.0.1", 1)}) as a:
            errors = []
            a.add_listener(lambda e: e["event"] == "error" and errors.append(e))
            _, good = a.send_nowait("bob", "an innocent message")
            try:
                a.send_nowait("bob", "file \udc80.txt")
            except PeerError as exc:
                assert "\\udc80" in str(exc) or "surrogate" in str(exc)
            else:
                raise AssertionError("a text that is not valid Unicode was accepted")
            msgid = await good
            assert a.pending() == [{"to": "bob", "id": msgid, "text": "an innocent message"}]
            assert errors == []

    asyncio.run(asyncio.wait_for(main(), 30))
