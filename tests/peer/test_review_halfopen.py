"""Review of dead-connection detection (``Liveness`` in eurechat.peer.node):
regression tests for what the review found.

In-process peers on real sockets and real SQLite files; the other side is a
raw framed socket where the test needs to control exactly what it says.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import List

from eurechat.framing import Decoder, Message
from eurechat.peer import Peer, Timings

#: Long probe timeouts: no probe fires on its own during these tests.
SLOW_PROBE = Timings(retry_base=0.02, retry_max=0.1, query_ttl=0.05, directory_wait=0,
                     ack_timeout=30.0, ping_timeout=30.0)


def run(coro, timeout: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(pred, timeout: float = 20.0) -> None:
    """Wait, bounded, for a state of an in-process peer that it announces to
    nobody (which connection a route uses, a transport's buffer)."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def stuff(peer: Peer, conn) -> None:
    """Queue more for ``conn``'s remote than the kernel buffers of both ends
    hold (the remote's receive buffer is tiny and it never reads), so the
    rest waits in ``conn``'s transport."""
    sock = conn.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    for i in range(3):
        peer.send_nowait(conn.remote, f"{i}" * 100_000)


class RawPeer:
    """A listening socket that plays bob frame by frame: what it receives is
    in ``got``; ``wait_for(pred)`` waits (bounded) for a frame matching it."""

    def __init__(self) -> None:
        self.got: List[Message] = []
        self.changed = asyncio.Event()
        self.writer: asyncio.StreamWriter = None  # type: ignore[assignment]
        self.server: asyncio.AbstractServer = None  # type: ignore[assignment]

    async def start(self) -> tuple:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[:2]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        dec = Decoder()
        while True:
            data = await reader.read(65536)
            if not data:
                return
            self.got.extend(dec.feed(data))
            self.changed.set()

    async def wait_for(self, pred, timeout: float = 20.0) -> Message:
        async def wait() -> Message:
            while True:
                for m in self.got:
                    if pred(m):
                        return m
                self.changed.clear()
                await self.changed.wait()
        return await asyncio.wait_for(wait(), timeout)

    def send(self, frame: bytes) -> None:
        self.writer.write(frame)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.server.close()
        await self.server.wait_closed()


def test_an_ack_we_send_does_not_start_the_wait_for_our_message(tmp_path: Path):
    """The wait for an answer starts at the first write that *owes* us one
    (a MESSAGE, a PING) after the last receive.  Our own ACK of bob's message
    owes us nothing: counting from it made alice's reply, sent a while after
    she acknowledged bob, look silent for that whole while at once (probed at
    the next sweep, and given up after PING_TIMEOUT alone instead of
    ACK_TIMEOUT + PING_TIMEOUT)."""
    async def main() -> None:
        bob = RawPeer()
        addr = await bob.start()
        alice = Peer("alice", data_dir=tmp_path / "alice", timings=SLOW_PROBE,
                     addresses={"bob": addr})
        await alice.start()
        try:
            m1 = await alice.send("bob", "m1")
            await bob.wait_for(lambda m: m.type == "MESSAGE" and m.payload == b"m1")
            bob.send(bytes(Message("ACK", (m1,))))
            bob.send(bytes(Message("MESSAGE", ("bob", "x1"), "hello alice")))
            await bob.wait_for(lambda m: m == Message("ACK", ("x1",)))
            # Alice's last write is her ACK of x1; now she says something.
            t0 = time.monotonic()
            await alice.send("bob", "m2")
            await bob.wait_for(lambda m: m.type == "MESSAGE" and m.payload == b"m2")
            conn = alice._routes["bob"].conn
            assert conn is not None and alice._routes["bob"].sent == 1
            assert conn.tx_since >= t0, (
                f"the wait for m2's ACK counts from {(t0 - conn.tx_since) * 1000:.3f} ms before m2 was sent")
            # And the sweep's verdict at ACK_TIMEOUT after m2 (not after the ACK): a probe.
            alice._check_live(conn, conn.tx_since + SLOW_PROBE.ack_timeout * 0.99)
            assert not conn.live.probe_at
            alice._check_live(conn, conn.tx_since + SLOW_PROBE.ack_timeout * 1.01)
            assert conn.live.probe_at
            await bob.wait_for(lambda m: m == Message("PING", ("probe",)))
        finally:
            await alice.close()
            await bob.close()
    run(main())


def test_the_older_connection_of_the_same_dialler_is_dropped_with_its_unsent_bytes(
        tmp_path: Path):
    """Alice dials bob anew only after giving her connection up, so bob drops
    the older one.  Its unsent bytes can never drain (alice reads nothing on
    it any more; a vanished host not even that), so closing it gracefully
    would keep it, its descriptor and megabytes of buffer until TCP gives up
    (some 15 minutes; for ever while a live kernel keeps its window shut).
    It is aborted; what was on it goes again over the new one."""
    async def main() -> None:
        alice_listener = socket.create_server(("127.0.0.1", 0))
        bob = Peer("bob", data_dir=tmp_path / "bob", timings=SLOW_PROBE,
                   addresses={"alice": alice_listener.getsockname()[:2]})
        await bob.start()
        socks: List[socket.socket] = []

        def dial(msgid: str) -> None:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # a tiny window
            s.connect(bob.address)
            s.sendall(bytes(Message("MESSAGE", ("alice", msgid), "hi")))
            socks.append(s)

        def route_conn():
            route = bob._routes.get("alice")
            return route.conn if route is not None else None

        lost = asyncio.Event()
        dropped: List[object] = []
        on_conn_lost = bob._on_conn_lost

        def watch(conn) -> None:
            on_conn_lost(conn)
            if conn in dropped:
                lost.set()
        bob._on_conn_lost = watch   # type: ignore[method-assign]
        try:
            dial("a1")
            await until(lambda: route_conn() is not None)
            old = route_conn()
            stuff(bob, old)
            await until(lambda: old.transport.get_write_buffer_size() > 0)
            dropped.append(old)
            dial("a2")   # alice gave the first one up and dials again
            await until(lambda: route_conn() is not old)
            new = route_conn()
            assert new is not None and not new.dialled and not new.closed
            await asyncio.wait_for(lost.wait(), 10)
            assert old.closed and route_conn() is new
        finally:
            await bob.close()
            for s in socks:
                s.close()
            alice_listener.close()
    run(main())


def test_an_idle_connection_whose_close_cannot_drain_is_aborted(tmp_path: Path, caplog):
    """The idle timeout closes a connection on which alice sent nothing for
    that long.  When what bob still has to send on it never drains (alice's
    window stays shut; a vanished host does not even answer), the graceful
    close never ends: the sweep found it idle again every round (a log line
    per sweep, every 0.75 s here, 1.25 s by default) until TCP
    gave up.  The next sweep aborts it instead."""
    caplog.set_level(logging.INFO, logger="eurechat.peer.node")

    async def main() -> None:
        alice_listener = socket.create_server(("127.0.0.1", 0))
        timings = Timings(retry_base=0.02, retry_max=0.1, query_ttl=0.05, directory_wait=0,
                          ack_timeout=30.0, ping_timeout=30.0, idle_timeout=1.5)
        bob = Peer("bob", data_dir=tmp_path / "bob", timings=timings,
                   addresses={"alice": alice_listener.getsockname()[:2]})
        await bob.start()
        s = socket.socket()
        lost = asyncio.Event()
        on_conn_lost = bob._on_conn_lost

        def watch(conn) -> None:
            on_conn_lost(conn)
            if conn.remote == "alice":
                lost.set()
        bob._on_conn_lost = watch   # type: ignore[method-assign]
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # a tiny window
            s.connect(bob.address)
            s.sendall(bytes(Message("MESSAGE", ("alice", "a1"), "hi")))
            await until(lambda: "alice" in bob._routes and bob._routes["alice"].conn is not None)
            conn = bob._routes["alice"].conn
            stuff(bob, conn)
            await until(lambda: conn.transport.get_write_buffer_size() > 0)
            await asyncio.wait_for(lost.wait(), 10)
            assert conn.closed
        finally:
            await bob.close()
            s.close()
            alice_listener.close()
    run(main())
    idle = [r for r in caplog.records if "idle for" in r.getMessage()]
    assert len(idle) == 1, [r.getMessage() for r in idle]
