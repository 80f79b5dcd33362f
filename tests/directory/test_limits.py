"""Abuse limits of SPEC §2-§3, end to end: timeouts (shortened by flags),
payload limits, malformed frames, --max-connections and backpressure."""

from __future__ import annotations

import asyncio
import select
import socket
import time

import pytest

from eurechat.framing import Message
from support.client import FramedClient, Responder
from support.processes import run_directory


def err(text):
    return Message("ERR", (), text)


@pytest.fixture(scope="module")
def limited(accounts_dir):
    with run_directory("--auth-timeout", "0.5", "--frame-timeout", "0.5",
                       "--max-connections", "40", "--throttle-limit", "1000",
                       data_dir=accounts_dir) as d:
        yield d


def test_preauth_timeout(limited):
    with FramedClient(*limited.address) as c:
        assert c.read_until_closed() == [err("authentication timeout, closing")]


def test_preauth_timeout_also_after_user(limited):
    with FramedClient(*limited.address) as c:
        c.request("USER", "bob")
        assert c.read_until_closed() == [err("authentication timeout, closing")]


def test_authenticated_sessions_have_no_idle_timeout_but_frames_must_finish(
        limited, passwords):
    with FramedClient(*limited.address) as idle, FramedClient(*limited.address) as slow:
        idle.login("bob", passwords["bob"])
        slow.login("corrado", passwords["corrado"])
        slow.send_raw(b"QUERY 10\nabc")  # a frame that never completes
        assert slow.read_until_closed() == [err("frame not completed in time, closing")]
        # The idle (but complete) session outlived both timeouts.
        assert idle.request("PING", "still-here") == Message("PONG", ("still-here",))


def test_preauth_payload_limit_keeps_session(limited, passwords):
    with FramedClient(*limited.address) as c:
        assert c.request("USER", "bob", payload=b"x" * 4097) == \
            err("message too large (4097 > 4096 bytes)")
        assert c.request("PING") == Message("PONG")
        c.login("bob", passwords["bob"])


def test_payload_limit_after_login_keeps_session(limited, passwords):
    with FramedClient(*limited.address) as c:
        c.login("bob", passwords["bob"])
        assert c.request("QUERY", payload=b"y" * 65536).type == "RESULT"
        assert c.request("QUERY", payload=b"y" * 65537) == \
            err("message too large (65537 > 65536 bytes)")
        assert c.request("PING", "after") == Message("PONG", ("after",))


@pytest.mark.parametrize("garbage", [b"lower-case? 0\n", b"PING -1\n", b"X" * 5000,
                                     b"PING 0 \x01\n", b"PING 12345678901\n"])
def test_malformed_gets_err_and_close(limited, garbage):
    with FramedClient(*limited.address) as c:
        c.send_raw(b"PING 0 before\n" + garbage)
        got = c.read_until_closed()
        assert got[0] == Message("PONG", ("before",))
        assert len(got) == 2 and got[1].type == "ERR"
        assert got[1].text.startswith("malformed message: ")
    with FramedClient(*limited.address) as c:  # the server is fine
        assert c.request("PING") == Message("PONG")


def test_max_connections(limited):
    clients = []
    try:
        for _ in range(40):
            c = FramedClient(*limited.address)
            clients.append(c)
            assert c.request("PING") == Message("PONG")
        mark = len(limited.err_lines)
        for _ in range(30):
            with FramedClient(*limited.address) as extra:
                assert extra.read_until_closed() == [err("max number of clients reached")]
        # Logged, but not once per refused connection (a flood must not flood the log).
        limited.wait_for_log(r"refusing .*: max number of clients reached \(40\)", start=mark)
        refusals = [line for line in limited.err_lines[mark:] if "refusing" in line]
        assert 1 <= len(refusals) < 30
        for c in clients:  # existing sessions untouched
            assert c.request("PING", "ok") == Message("PONG", ("ok",))
    finally:
        for c in clients:
            c.close()


def test_max_payload_option(accounts_dir, passwords):
    with run_directory("--max-payload", "100", data_dir=accounts_dir) as d, \
            FramedClient(*d.address) as c:
        c.login("bob", passwords["bob"])
        assert c.request("PING", payload=b"z" * 101) == err("message too large (101 > 100 bytes)")
        assert c.request("PING", payload=b"z" * 100) == Message("PONG")


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_backpressure_client_that_stops_reading(tmp_path):
    """A client pipelines 40,000 ``QUERY 0`` on a directory of 100 registrations
    (~100 MB of replies) without reading: the server's memory stays bounded,
    and once the client reads, every reply arrives, in order."""
    names = [f"user{i:03d}" for i in range(100)]
    with run_directory("--bind-policy", "any", data_dir=str(tmp_path)) as d, \
            Responder() as peer:
        setup = FramedClient(*d.address)
        for name in names:
            assert setup.request("REGISTER", name, "password-" + name).type == "ACK"
        for name in names:
            with FramedClient(*d.address) as c:
                c.login(name, "password-" + name)
                assert c.request("BIND", "127.0.0.1", str(peer.port)).type == "ACK"
        setup.close()
        with FramedClient(*d.address) as c:
            c.login(names[0], "password-" + names[0])
            expected = c.request("QUERY")
            assert expected.text.count("\n") == 99
            reply_size = len(bytes(expected))
            before = _rss_kib(d.pid)
            count = 40_000
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            c.send_raw(b"QUERY 0\n" * count)
            # Let the server run into the wall: a PING on another connection is
            # answered only after the event loop processed what it could.
            with FramedClient(*d.address) as probe:
                assert probe.request("PING") == Message("PONG")
            grown = _rss_kib(d.pid) - before
            assert grown * 1024 < count * reply_size // 3, (grown, count * reply_size)
            for i in range(count):
                assert c.recv() == expected, i


def test_a_large_pipelined_read_does_not_start_the_frame_timer(limited, passwords):
    """A big read is decoded slice by slice; a slice ending mid-frame is not a
    frame the client left unfinished.  Session A sends ~200 KiB of pipelined
    requests, gets every reply and idles; session B really leaves a frame
    unfinished.  When B is closed for it, A (whose bytes all came earlier) is
    still served."""
    with FramedClient(*limited.address) as a, FramedClient(*limited.address) as b:
        a.login("bob", passwords["bob"])
        b.login("corrado", passwords["corrado"])
        count = 15_000
        a.send_raw(b"".join(b"PING 0 %d\n" % i for i in range(count)))
        for i in range(count):
            assert a.recv() == Message("PONG", (str(i),))
        b.send_raw(b"QUERY 10\nabc")
        assert b.read_until_closed() == [err("frame not completed in time, closing")]
        assert a.request("PING", "alive") == Message("PONG", ("alive",))


def _tcp_timer(local_port: int, remote_port: int) -> str:
    """The kernel's timer code of a loopback IPv4 connection (``/proc/net/tcp``
    column ``tr``): ``02`` is the keepalive timer, ``00`` none."""
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            local = int(fields[1].split(":")[1], 16)
            remote = int(fields[2].split(":")[1], 16)
            if (local, remote) == (local_port, remote_port):
                return fields[5].split(":")[0]
    raise AssertionError(f"no connection {local_port} -> {remote_port}")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sessions_have_tcp_keepalive(tmp_path, workers):
    """Long-lived sessions have TCP keepalive on (SPEC §2), with one worker and
    with SO_REUSEPORT workers: the server's end of an idle connection runs the
    kernel's keepalive timer, the client's end (no keepalive) does not."""
    with run_directory("--workers", workers, data_dir=str(tmp_path)) as d, \
            FramedClient(*d.address) as c:
        assert c.request("PING") == Message("PONG")
        mine = c.sock.getsockname()[1]
        assert _tcp_timer(d.port, mine) == "02"
        assert _tcp_timer(mine, d.port) == "00"


def _stall(client: FramedClient, request: bytes, seconds: float = 0.5) -> None:
    """Send ``request`` over and over without reading, until the server stops
    reading too (its replies fill both kernel buffers and its own)."""
    client.sock.setblocking(False)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            client.sock.send(request)
        except BlockingIOError:
            select.select([], [client.sock], [], 0.05)


def _server_end_gone(port: int, client: FramedClient, timeout: float = 10.0) -> bool:
    """Wait until the server's end of ``client``'s connection is no longer
    established (``/proc/net/tcp`` state 01), polling the kernel's table."""
    mine = client.sock.getsockname()[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as f:
            rows = [line.split() for line in f.read().splitlines()[1:]]
        states = [r[3] for r in rows if int(r[1].split(":")[1], 16) == port
                  and int(r[2].split(":")[1], 16) == mine]
        if not states or states[0] != "01":
            return True
        select.select([], [], [], 0.05)
    return False


def test_preauth_timeout_also_for_a_client_that_does_not_read(limited):
    """A pre-auth client pipelining big PINGs without reading fills its
    buffers; at the auth timeout it is cut off all the same (close() would wait
    for ever for it to read, and the connection would outlive every timeout)."""
    with FramedClient(*limited.address) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        _stall(c, b"PING 0 " + b"t" * 4000 + b"\n")
        assert _server_end_gone(limited.port, c)
    with FramedClient(*limited.address) as c:  # the server is fine
        assert c.request("PING") == Message("PONG")


def test_closing_session_whose_client_does_not_read_is_aborted(tmp_path):
    """A session closed with replies still buffered (its client stopped reading)
    is aborted after ``close_linger`` instead of waiting for ever.  In process,
    on real sockets: the server's own buffer is filled, then the close issued."""
    from eurechat.directory.accounts.sqlite import SqliteAccounts
    from eurechat.directory.presence.memory import MemoryRegistry
    from eurechat.directory.server import DirectoryServer, ServerConfig, Services
    from eurechat.directory.throttle.memory import MemoryThrottle

    async def main():
        services = Services(MemoryRegistry(), SqliteAccounts(str(tmp_path / "a.sqlite3")),
                            MemoryThrottle())
        await services.accounts.start()
        server = DirectoryServer(ServerConfig(close_linger=0.3, auth_timeout=60),
                                 services)
        host, port = await server.start("127.0.0.1", 0)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        await asyncio.get_running_loop().sock_connect(client, (host, port))
        # A session begins with its first byte (it tells TLS from plaintext).
        await asyncio.get_running_loop().sock_sendall(client, b"PING 0\n")
        try:
            deadline = time.monotonic() + 10
            while not server.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # the accept callback runs on this loop
            proto = next(iter(server.connections))
            proto.transport.write(b"x" * (16 << 20))  # far more than the kernel takes
            assert proto.transport.get_write_buffer_size() > 0
            proto.close_transport()
            # connection_lost is what removes it from the server's table.
            deadline = time.monotonic() + 10
            while proto in server.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert not server.connections and not server.closing
        finally:
            client.close()
            await server.close()
            await services.accounts.close()

    asyncio.run(main())
