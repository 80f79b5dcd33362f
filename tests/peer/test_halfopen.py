"""A pair connection that went silent (half-open) is noticed within seconds.

When the other side's host vanishes without a FIN or RST (power cut, network
change, a NAT that forgot the mapping), our connection stays "open": writes
succeed and nothing comes back.  The peer probes a connection that owes it
ACKs and has been silent for ``EURECHAT_ACK_TIMEOUT`` with a PING, closes it
when the PING goes unanswered for ``EURECHAT_PING_TIMEOUT``, and sends again
over a new one (the receiver dedupes).  An idle connection, with nothing of
ours in flight, is never probed.

The half-open connection is made for real: bob's registration points to a
TCP relay in this test that forwards to the real bob, then stops forwarding
("blackholes") while keeping both sockets open.  Connections made after that
are relayed normally: the route is back, as when a NAT makes a new mapping.

The last tests pin down when the wait for an answer starts, which of two
connections of the same dialler is kept, and that an idle connection whose
close cannot drain is aborted: in-process peers on real sockets and real
SQLite files, the other side a raw framed socket where the test must control
exactly what it says.

The verdicts themselves, and which of two connections the pair rule keeps,
are unit-tested without sockets in test_liveness.py and test_pairing.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import selectors
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest

from eurechat.errors import ProtocolError
from eurechat.framing import Decoder, Message, encode
from eurechat.peer import Peer, Timings
from support.client import FramedClient
from support.peers import PASSWORD

FAST_PROBE = {"EURECHAT_ACK_TIMEOUT": "0.5", "EURECHAT_PING_TIMEOUT": "0.5"}


def texts(peer) -> List[str]:
    return [e["text"] for e in peer.events("message")]


def listen_of(peer) -> Tuple[str, int]:
    host, port = peer.events("ready")[0]["listen"].rsplit(":", 1)
    return host, int(port)


def bind_as(cluster, name: str, port: int, register: bool = False) -> None:
    """Log in to the directory as ``name`` and BIND 127.0.0.1:``port`` (the last
    BIND wins, and the registration outlives this session)."""
    with FramedClient("127.0.0.1", cluster.dir_port) as c:
        if register:
            reply = c.request("REGISTER", name, payload=PASSWORD)
            assert reply.type == "ACK", reply
        assert c.request("USER", name).type == "ACK"
        assert c.request("PASS", payload=PASSWORD) == Message(
            "ACK", (), "successfully authenticated")
        reply = c.request("BIND", "127.0.0.1", str(port))
        assert reply == Message("ACK", (), f"bound successfully to 127.0.0.1:{port}"), reply


class _Pair:
    """One relayed connection: ``client`` (who dialled us) and ``server`` (target)."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.blackholed = False
        self.closed = False


class Relay:
    """A TCP relay on 127.0.0.1 to ``target``: to a connection, what a NAT or
    the network between two hosts is.

    ``blackhole()`` silences the connections relayed so far: it stops reading
    (so stops forwarding) from both sides, or with ``forth=False`` only from
    the target (what the target says never comes back).  Their sockets stay
    open, and so does one side when the other closes: nobody gets a FIN or a
    RST — a half-open connection.  Connections accepted later are relayed
    normally.  All socket work runs in one thread; ``call`` runs a function
    there between two forwards.

    ``rate`` (bytes/s) makes the way from client to target a slow link: the
    relay takes at most that much from the client per second, with small
    socket buffers, so what is not yet forwarded waits in the client's own
    send queue, as it would behind a slow uplink."""

    CHUNK = 8192

    def __init__(self, target: Tuple[str, int], rate: float = 0.0) -> None:
        self.target = target
        self.rate = rate
        self._paced: List[Tuple[float, socket.socket, _Pair]] = []   # (resume at, sock, pair)
        self.listener = socket.socket()
        if rate:
            # Inherited by accepted sockets; set before listen() so the
            # window offered at the handshake is small too.
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.CHUNK)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.pairs: List[_Pair] = []
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._calls: queue.Queue = queue.Queue()
        self._stop = False
        self._sel.register(self.listener, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"relay-{self.port}")
        self._thread.start()

    # -- the relay thread ------------------------------------------------------
    def _run(self) -> None:
        while not self._stop:
            timeout = None
            if self._paced:
                now = time.monotonic()
                for item in [p for p in self._paced if p[0] <= now]:
                    self._paced.remove(item)
                    if not item[2].closed and not item[2].blackholed:
                        self._sel.register(item[1], selectors.EVENT_READ, item[2])
                if self._paced:
                    timeout = max(0.0, min(p[0] for p in self._paced) - now)
            for key, _ in self._sel.select(timeout):
                sock = key.fileobj
                if sock is self._wake_r:
                    self._wake_r.recv(4096)
                    while not self._calls.empty():
                        fn, fut = self._calls.get()
                        try:
                            fut.set_result(fn())
                        except BaseException as exc:   # reported to the caller
                            fut.set_exception(exc)
                elif sock is self.listener:
                    self._accept()
                else:
                    self._forward(key.data, sock)   # type: ignore[arg-type]

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for s in (client, server):
            s.settimeout(5)
        pair = _Pair(client, server)
        self.pairs.append(pair)
        self._sel.register(client, selectors.EVENT_READ, pair)
        self._sel.register(server, selectors.EVENT_READ, pair)

    def _forward(self, pair: _Pair, sock: socket.socket) -> None:
        other = pair.server if sock is pair.client else pair.client
        paced = self.rate and sock is pair.client
        try:
            data = sock.recv(self.CHUNK if paced else 65536)
        except OSError:
            data = b""
        if data:
            try:
                other.sendall(data)
            except OSError:
                pass
            else:
                if paced:   # the link's pace: next read when these bytes are "through"
                    self._sel.unregister(sock)
                    self._paced.append((time.monotonic() + len(data) / self.rate, sock, pair))
                return
        if pair.blackholed:
            self._sel.unregister(sock)   # keep both open: nobody hears of it
            return
        self._close(pair)

    def _close(self, pair: _Pair) -> None:
        for s in (pair.client, pair.server):
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        pair.closed = True

    # -- the test's side -------------------------------------------------------
    def call(self, fn: Callable[[], object], timeout: float = 10.0) -> object:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((fn, fut))
        self._wake_w.send(b"x")
        return fut.result(timeout)

    def blackhole(self, forth: bool = True) -> int:
        """Silence every open relayed connection; returns how many."""
        def do() -> int:
            n = 0
            for pair in self.pairs:
                if pair.closed:
                    continue
                pair.blackholed = True
                n += 1
                for s in (pair.server, pair.client) if forth else (pair.server,):
                    try:
                        self._sel.unregister(s)
                    except (KeyError, ValueError):
                        pass
            return n
        return self.call(do)  # type: ignore[return-value]

    def held(self) -> List[Tuple[bytes, bool]]:
        """Per blackholed connection: the bytes its client sent that were never
        forwarded, and whether the client has closed its end."""
        def do() -> List[Tuple[bytes, bool]]:
            out = []
            for pair in self.pairs:
                if not pair.blackholed or pair.closed:
                    continue
                data, eof = b"", False
                pair.client.setblocking(False)   # (a timeout would wait for data)
                while True:
                    try:
                        chunk = pair.client.recv(65536)
                    except BlockingIOError:
                        break
                    except OSError:   # reset
                        eof = True
                        break
                    if not chunk:
                        eof = True
                        break
                    data += chunk
                pair.client.settimeout(5)
                out.append((data, eof))
            return out
        return self.call(do)  # type: ignore[return-value]

    def close(self) -> None:
        def do() -> None:
            self._stop = True
            for pair in self.pairs:
                if not pair.closed:
                    self._close(pair)
        try:
            self.call(do)
        finally:
            self._thread.join(10)
            for s in (self.listener, self._wake_r, self._wake_w):
                s.close()
            self._sel.close()


@pytest.fixture
def relays():
    made: List[Relay] = []

    def make(target: Tuple[str, int], rate: float = 0.0) -> Relay:
        r = Relay(target, rate)
        made.append(r)
        return r

    try:
        yield make
    finally:
        for r in made:
            r.close()


def test_a_half_open_connection_is_probed_dropped_and_the_message_delivered_once(
        cluster, relays):
    """Alice's connections to bob and to carol both go silent.  The one that
    owes alice an ACK is probed, given up within a second or two (not the
    300 s idle timeout) and replaced; the message arrives once.  The idle one
    (nothing in flight) is neither probed nor closed, however long it has
    been silent."""
    # Bob trusts his lookups for long (alice's address, checked when she first
    # connected, is still in his cache when she connects again).
    bob = cluster.peer("bob", env=cluster.env(EURECHAT_QUERY_TTL="60"))
    carol = cluster.peer("carol")
    via: Dict[str, Relay] = {}
    for name, peer in (("bob", bob), ("carol", carol)):
        via[name] = relays(listen_of(peer))
        bind_as(cluster, name, via[name].port)
    alice = cluster.peer("alice", "--log-level", "INFO", env=cluster.env(**FAST_PROBE))
    alice.cmd("/msg bob one", "/msg carol hello carol")
    bob.wait_event("message", text="one")
    carol.wait_event("message", text="hello carol")
    alice.count("delivered", 2)

    assert via["bob"].blackhole() >= 1
    assert via["carol"].blackhole() >= 1
    mark = len(alice.p.err_lines)
    alice.cmd("/msg bob two")
    alice.p.wait_for_log(r"<conn to bob .*unacknowledged and nothing received .*probing with PING",
                         start=mark)
    alice.p.wait_for_log(r"<conn to bob .*no answer to a PING .*half-open; closing it",
                         start=mark)
    m = bob.wait_event("message", text="two")
    alice.wait_event("delivered", to="bob", id=m["id"])
    alice.cmd("/msg bob three")
    bob.wait_event("message", text="three")
    assert texts(bob) == ["one", "two", "three"]   # each once, in order

    # What alice wrote on the dead connection, never forwarded: "two", then
    # the probe (TLS application data records: the link is encrypted); and
    # she closed her end.
    held = [(data, eof) for data, eof in via["bob"].held() if data]
    assert len(held) == 1, held
    data, eof = held[0]
    assert data[:3] == b"\x17\x03\x03" and b"two" not in data and eof, held
    # Carol's connection was silent longer, but owed nothing: not a byte, not closed.
    assert via["carol"].held() and all(h == (b"", False) for h in via["carol"].held())
    assert not [line for line in alice.p.err_lines[mark:] if "conn to carol" in line]


def test_acks_lost_on_a_silent_connection_the_resent_copy_is_shown_once(cluster, relays):
    """Only the way back goes silent: bob records "two" and ACKs it, the ACK
    (and the PONG) never reach alice.  She gives the connection up, sends
    "two" again over a new one, bob acknowledges the duplicate without showing
    it, and keeps the new connection (the old one, from the same dialler,
    looks open to him)."""
    bob = cluster.peer("bob", env=cluster.env(EURECHAT_QUERY_TTL="60"))
    relay = relays(listen_of(bob))
    bind_as(cluster, "bob", relay.port)
    alice = cluster.peer("alice", "--log-level", "INFO", env=cluster.env(**FAST_PROBE))
    alice.cmd("/msg bob one")
    alice.wait_event("delivered", to="bob")
    assert relay.blackhole(forth=False) >= 1
    mark = len(alice.p.err_lines)
    alice.cmd("/msg bob two")
    m = bob.wait_event("message", text="two")       # recorded and ACKed; the ACK is lost
    alice.p.wait_for_log(r"<conn to bob .*no answer to a PING .*closing it", start=mark)
    alice.wait_event("delivered", to="bob", id=m["id"])
    alice.cmd("/msg bob three")
    bob.wait_event("message", text="three")
    alice.count("delivered", 3)
    assert texts(bob) == ["one", "two", "three"]
    assert len(alice.events("delivered")) == 3


def test_the_kept_connection_half_open_the_other_side_redials_and_is_taken(
        cluster, relays):
    """Alice (whose name sorts first) dialled bob; both send over that one
    connection.  It goes silent.  Bob, who owes an ACK, gives it up and dials
    alice.  Alice has nothing in flight and still believes in the connection
    she dialled, which the pair rule keeps over bob's new one: she closes
    bob's, but probes hers, finds it dead, and takes bob's next dial."""
    bob = cluster.peer("bob", "--log-level", "INFO", env=cluster.env(**FAST_PROBE))
    relay = relays(listen_of(bob))
    bind_as(cluster, "bob", relay.port)
    # Alice trusts her lookups for long (the check of bob's new connection
    # is then decided before his first message is even recorded).
    alice = cluster.peer("alice", "--log-level", "INFO", env=cluster.env(
        EURECHAT_QUERY_TTL="60", **FAST_PROBE))
    alice.cmd("/msg bob a1")
    alice.wait_event("delivered", to="bob")
    bob.cmd("/msg alice b1")
    bob.wait_event("delivered", to="alice")
    assert relay.blackhole() >= 1
    mark_a, mark_b = len(alice.p.err_lines), len(bob.p.err_lines)
    bob.cmd("/msg alice b2")
    bob.p.wait_for_log(r"<conn from alice .*no answer to a PING", start=mark_b)
    m = alice.wait_event("message", text="b2")
    bob.wait_event("delivered", to="alice", id=m["id"])
    alice.p.wait_for_log(r"<conn to bob .*bob dialled us anew; probing", start=mark_a)
    alice.cmd("/msg bob a2")
    bob.wait_event("message", text="a2")
    assert texts(alice) == ["b1", "b2"] and texts(bob) == ["a1", "a2"]


def test_a_slow_link_still_taking_our_bytes_is_not_given_up(cluster, relays):
    """A 400 kB message over a 200 kB/s link takes 2 s, longer than both of
    the probe's timeouts here.  The PING waits behind it in alice's send queue, but the
    queue drains: the connection is alive, and it is kept until the ACK
    (giving it up would resend the message from the start, for ever)."""
    bob = cluster.peer("bob")
    relay = relays(listen_of(bob), rate=200_000)
    bind_as(cluster, "bob", relay.port)
    alice = cluster.peer("alice", "--log-level", "INFO", env=cluster.env(
        EURECHAT_ACK_TIMEOUT="0.2", EURECHAT_PING_TIMEOUT="1"))
    mark = len(alice.p.err_lines)
    big = "x" * 400_000
    alice.cmd(f"/msg bob {big}")
    m = alice.p.wait_for_log(r"(<conn to bob [^>]*>): 1 message\(s\) unacknowledged "
                             r".*probing with PING", start=mark)
    got = bob.wait_event("message")
    alice.wait_event("delivered", to="bob", id=got["id"])
    assert texts(bob) == [big]
    assert "no answer to a PING" not in alice.p.stderr()
    assert m[1] in alice.p.stderr()


class SlowPeer:
    """Plays bob: answers every PING at once, but acknowledges no message until
    ``release()`` (a receiver alive but slow to record, e.g. a stalled disk)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.acking = False
        self.unacked: List[Tuple[socket.socket, str]] = []
        self.senders: List[socket.socket] = []    # connections that sent a MESSAGE
        self.socks: List[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.socks.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        dec = Decoder()
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            try:
                for m in dec.feed(data):
                    with self.lock:
                        if m.type == "PING":
                            conn.sendall(encode("PONG", m.args))
                        elif m.type == "MESSAGE":
                            if conn not in self.senders:
                                self.senders.append(conn)
                            if self.acking:
                                conn.sendall(encode("ACK", m.args[1:]))
                            else:
                                self.unacked.append((conn, m.args[1]))
            except OSError:   # closed under us at the end of the test
                return
            except ProtocolError:   # a TLS ClientHello: no TLS here, as a seed peer
                conn.close()
                return

    def release(self) -> None:
        with self.lock:
            self.acking = True
            for conn, msgid in self.unacked:
                conn.sendall(encode("ACK", (msgid,)))
            self.unacked = []

    def close(self) -> None:
        # shutdown, not just close: it is what wakes a thread blocked in
        # accept() or recv() on the socket (Linux).
        with self.lock:
            for s in [self.listener, *self.socks]:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_a_receiver_that_answers_the_probe_keeps_its_connection(cluster):
    """Alive but slow: bob takes long to ACK but answers PING.  Alice probes
    again and again (every ACK timeout of silence) over the same connection
    and never gives it up; the ACK, when it comes, is taken on it."""
    slow = SlowPeer()
    try:
        bind_as(cluster, "bob", slow.port, register=True)
        alice = cluster.peer("alice", "--log-level", "INFO", env=cluster.env(
            EURECHAT_ACK_TIMEOUT="0.3", EURECHAT_PING_TIMEOUT="10"))
        mark = len(alice.p.err_lines)
        alice.cmd("/msg bob take your time")
        conns = set()
        for _ in range(3):
            m = alice.p.wait_for_log(r"(<conn to bob [^>]*>): 1 message\(s\) unacknowledged "
                                     r".*probing with PING", start=mark)
            conns.add(m[1])
            mark = alice.p.err_lines.index(m.string, mark) + 1
        assert len(conns) == 1, conns           # the same connection each time
        slow.release()
        alice.wait_event("delivered", to="bob")
        assert len(slow.senders) == 1
        assert "no answer to a PING" not in alice.p.stderr()
    finally:
        slow.close()


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
    owes us nothing: counting from it would make alice's reply, sent a while
    after she acknowledged bob, look silent for that whole while at once
    (probed at the next sweep, and given up after PING_TIMEOUT alone instead
    of ACK_TIMEOUT + PING_TIMEOUT)."""
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
    close never ends: the sweep would find it idle again every round (a log
    line per sweep, every 0.75 s here, 1.25 s by default) until TCP gives
    up.  The next sweep aborts it instead."""
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
