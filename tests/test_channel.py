"""The blocking Channel: whole messages under concurrency and partial reads."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from eurechat.channel import Channel, ChannelClosed
from eurechat.errors import FrameTooLarge, ProtocolError


@pytest.fixture
def pair():
    listener = Channel.listen("127.0.0.1", 0)
    host, port = listener.address
    client = Channel.connect(host, port, timeout=5)
    server = listener.accept()
    yield client, server
    client.close()
    server.close()
    listener.close()


def test_round_trip_and_framing_on_the_wire(pair):
    client, server = pair
    client.send(b"hello")
    client.send(b"")
    client.send(bytes(range(256)) * 1000)
    assert server.recv() == b"hello"
    assert server.recv() == b""
    assert server.recv() == bytes(range(256)) * 1000
    server.send(bytearray(b"back"))
    assert client.recv() == b"back"


def test_exact_wire_bytes():
    listener = Channel.listen("127.0.0.1", 0)
    with listener, socket.create_connection(listener.address, timeout=5) as raw:
        ch = listener.accept()
        ch.send(b"hi there")
        assert raw.recv(100) == b"MSG 8\nhi there"
        # Partial reads: the frame arrives one byte at a time.
        for b in b"MSG 5\nabcde":
            raw.sendall(bytes([b]))
        assert ch.recv() == b"abcde"
        ch.close()


def test_concurrent_senders_and_receivers_get_whole_messages(pair):
    client, server = pair
    threads, per_thread, received = 8, 500, []
    lock = threading.Lock()

    def sender(t):
        for i in range(per_thread):
            client.send(f"{t}:{i}:".encode() + b"x" * (i % 3000))

    def receiver():
        while True:
            try:
                data = server.recv()
            except ChannelClosed:
                return
            with lock:
                received.append(data)

    receivers = [threading.Thread(target=receiver) for _ in range(3)]
    senders = [threading.Thread(target=sender, args=(t,)) for t in range(threads)]
    for th in receivers + senders:
        th.start()
    for th in senders:
        th.join(60)
    client.close()       # EOF lets the receivers finish
    for th in receivers:
        th.join(60)
    assert len(received) == threads * per_thread
    seen = set()
    for data in received:
        t, i, rest = data.split(b":", 2)
        assert rest == b"x" * (int(i) % 3000)   # never torn or interleaved
        seen.add((int(t), int(i)))
    assert len(seen) == threads * per_thread


def test_per_sender_order_is_kept(pair):
    client, server = pair
    for i in range(1000):
        client.send(b"%d" % i)
    assert [int(server.recv()) for _ in range(1000)] == list(range(1000))


def test_eof_close_and_errors():
    listener = Channel.listen("127.0.0.1", 0)
    with listener:
        raw = socket.create_connection(listener.address, timeout=5)
        ch = listener.accept()
        raw.sendall(b"MSG 3\nab")
        raw.close()
        with pytest.raises(ChannelClosed, match="middle"):
            ch.recv()
        with pytest.raises(ChannelClosed):
            ch.recv()
        ch.close()
        with pytest.raises(ChannelClosed):
            ch.send(b"x")

        raw = socket.create_connection(listener.address, timeout=5)
        ch = listener.accept()
        raw.sendall(b"PING 0\n")
        with pytest.raises(ProtocolError):
            ch.recv()
        assert ch.closed
        raw.close()

    listener = Channel.listen("127.0.0.1", 0)
    with listener:
        raw = socket.create_connection(listener.address, timeout=5)
        ch = Channel(listener.accept().sock, max_payload=4)
        raw.sendall(b"MSG 5\nabcdeMSG 2\nok")
        with pytest.raises(FrameTooLarge):
            ch.recv()
        assert ch.recv() == b"ok"   # still usable
        raw.close()
        ch.close()


def _wait_blocked_in_socket(tid_box: list, timeout: float = 10.0) -> None:
    """Wait until the thread whose native id lands in ``tid_box`` sleeps inside
    a socket call (the kernel's wait channel), not merely somewhere before it."""
    deadline = time.monotonic() + timeout
    wchan = ""
    while time.monotonic() < deadline:
        if tid_box:
            try:
                with open(f"/proc/self/task/{tid_box[0]}/wchan") as f:
                    wchan = f.read()
            except FileNotFoundError:
                break                      # the thread already ended
            if wchan in ("wait_woken", "sk_wait_data", "sk_stream_wait_memory"):
                return
        time.sleep(0.005)   # polling the kernel's view: there is no event to wait on
    raise AssertionError(f"the thread never blocked in a socket call (wchan {wchan!r})")


def test_close_unblocks_a_blocked_recv(pair):
    client, server = pair
    errors, tid = [], []

    def blocked():
        tid.append(threading.get_native_id())
        try:
            server.recv()
        except ChannelClosed as exc:
            errors.append(exc)

    th = threading.Thread(target=blocked)
    th.start()
    _wait_blocked_in_socket(tid)
    server.close()   # from another thread, while recv() blocks
    th.join(10)
    assert not th.is_alive() and errors


def test_close_unblocks_a_blocked_send(pair):
    """A sender blocked because the other side does not read (its buffers are
    full) is released by close() from another thread, with ChannelClosed."""
    client, server = pair
    errors, tid = [], []
    chunk = b"x" * (1 << 20)

    def blocked():
        tid.append(threading.get_native_id())
        try:
            while True:
                client.send(chunk)
        except ChannelClosed as exc:
            errors.append(exc)

    th = threading.Thread(target=blocked)
    th.start()
    _wait_blocked_in_socket(tid)
    client.close()
    th.join(10)
    assert not th.is_alive() and errors
    with pytest.raises(ChannelClosed):
        client.send(b"after close")


def test_listen_iterates_channels():
    with Channel.listen("127.0.0.1", 0) as listener:
        def serve():
            for ch in listener:
                with ch:
                    for data in ch:
                        ch.send(data.upper())
        th = threading.Thread(target=serve, daemon=True)
        th.start()
        with Channel.connect(*listener.address) as c:
            c.send(b"echo")
            assert c.recv() == b"ECHO"
    th.join(10)
    assert not th.is_alive()
