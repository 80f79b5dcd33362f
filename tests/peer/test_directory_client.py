"""The peer's directory client against a scripted directory on a real socket
(TLS, its CA pinned): the failure modes a healthy directory never shows."""

from __future__ import annotations

import asyncio
from typing import List

import pytest

from eurechat.framing import Decoder, Message
from eurechat.peer.directory_client import (
    DirectoryClient,
    DirectoryError,
    backoff_delay,
    parse_result,
)
from eurechat.registration import Registration
from eurechat.tls.trust import DirectoryTrust
from support.certs import directory_pki

SERVER_SSL, CA_PEM = directory_pki()


def trusting() -> DirectoryTrust:
    return DirectoryTrust(ca_pem=CA_PEM)


class ScriptedDirectory:
    """Answers HELLO/USER/PASS/BIND; answers QUERY only on sessions listed in
    ``answer_queries_on`` (0-based session number), stays silent otherwise.
    ``hold``: the answer to a QUERY is held back until the next request arrives."""

    def __init__(self, answer_queries_on: set, hold: bool = False) -> None:
        self.answer_queries_on = answer_queries_on
        self.hold = hold
        self.sessions = 0
        self.requests: List[tuple] = []
        self.server = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=SERVER_SSL)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer) -> None:
        n = self.sessions
        self.sessions += 1
        dec = Decoder()
        held = b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                for m in dec.feed(data):
                    self.requests.append((n, m.type))
                    if held:
                        writer.write(held)
                        held = b""
                    if m.type == "QUERY":
                        if n in self.answer_queries_on:
                            reply = bytes(Message("RESULT", (), f"bob,127.0.0.1,{5000 + n}"))
                            if self.hold:
                                held = reply
                            else:
                                writer.write(reply)
                    else:
                        writer.write(bytes(Message("ACK", (), "ok")))
        finally:
            writer.close()

    def close(self) -> None:
        self.server.close()


def test_a_request_that_times_out_drops_the_session_and_replies_stay_matched():
    """A directory that stops answering is treated as gone: the session is
    dropped and re-established, and the next QUERY gets its own answer (not
    the late answer to an earlier request)."""
    async def main() -> None:
        fake = ScriptedDirectory(answer_queries_on={1})
        port = await fake.start()
        client = DirectoryClient("127.0.0.1", port, "alice", "password123",
                                 listen=lambda: ("127.0.0.1", 4000), trust=trusting(), request_timeout=0.5,
                                 retry_base=0.01, retry_max=0.05, wait_online=5.0)
        try:
            assert await client.start() is True
            try:
                await client.query("bob")
            except (asyncio.TimeoutError, DirectoryError):
                pass
            else:
                raise AssertionError("the silent directory answered")
            regs = await asyncio.wait_for(client.query("bob"), 10)
            assert regs == [Registration("bob", "127.0.0.1", 5001)]
            assert fake.sessions == 2
            assert [t for n, t in fake.requests if n == 1] == ["HELLO", "USER", "PASS", "BIND", "QUERY"]
        finally:
            await client.close()
            fake.close()

    asyncio.run(main())


def test_one_reply_per_request_even_for_a_request_given_up_on():
    """Replies are matched to requests strictly in order: a reply to a
    request whose caller stopped waiting is consumed by that request."""
    async def main() -> None:
        fake = ScriptedDirectory(answer_queries_on={0}, hold=True)
        port = await fake.start()
        client = DirectoryClient("127.0.0.1", port, "alice", "password123",
                                 listen=lambda: ("127.0.0.1", 4000), trust=trusting(), request_timeout=10)
        try:
            assert await client.start() is True
            # The caller gives up on a QUERY before its reply (held back by
            # the directory until the next request) arrives.
            task = asyncio.ensure_future(client.request(Message("QUERY", ("bob",))))
            await asyncio.sleep(0)          # let it start waiting
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            second = await asyncio.wait_for(client.request(Message("PING", ("tok",))), 10)
            # The QUERY's RESULT went to the abandoned request, the PING got its ACK.
            assert second.type == "ACK"
        finally:
            await client.close()
            fake.close()

    asyncio.run(main())


def test_directory_replies_up_to_64_mib_oversized_beyond_and_the_session_goes_on():
    """From the directory the peer accepts payloads up to 64 MiB (a QUERY on a
    huge directory), far above the 1 MiB it accepts from peers; a larger
    reply is skipped as it streams by, that request fails, the session stays."""
    big_lines = "\n".join(f"user{i:07d},127.0.0.1,{1024 + i % 60000}" for i in range(80_000))
    assert 2 * 1024 * 1024 < len(big_lines) < 64 * 1024 * 1024

    async def serve(reader, writer):
        dec = Decoder()
        queries = 0
        while True:
            data = await reader.read(65536)
            if not data:
                return
            for m in dec.feed(data):
                if m.type != "QUERY":
                    writer.write(bytes(Message("ACK", (), "ok")))
                    continue
                queries += 1
                if queries == 1:
                    writer.write(bytes(Message("RESULT", (), big_lines)))
                elif queries == 2:
                    n = 64 * 1024 * 1024 + 1
                    writer.write(b"RESULT %d\n" % n)
                    chunk = b"x" * (1024 * 1024)
                    for _ in range(64):
                        writer.write(chunk)
                        await writer.drain()
                    writer.write(b"x")
                else:
                    writer.write(bytes(Message("RESULT", (), "bob,127.0.0.1,5555")))

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=SERVER_SSL)
        port = server.sockets[0].getsockname()[1]
        client = DirectoryClient("127.0.0.1", port, "alice", "password123",
                                 listen=lambda: ("127.0.0.1", 4000), trust=trusting(), request_timeout=30)
        try:
            assert await client.start() is True
            regs = await client.query()
            assert len(regs) == 80_000 and regs[0] == Registration("user0000000", "127.0.0.1", 1024)
            try:
                await client.query()
            except DirectoryError as exc:
                assert "oversized" in str(exc)
            else:
                raise AssertionError("a reply over 64 MiB was accepted")
            assert client.online
            assert await client.query("bob") == [Registration("bob", "127.0.0.1", 5555)]
        finally:
            await client.close()
            server.close()

    asyncio.run(main())


def test_backoff_is_capped_and_jittered():
    delays = [backoff_delay(a, 0.25, 30.0) for a in range(200)]
    assert max(delays) <= 30.0
    assert min(delays[20:]) >= 15.0          # at the cap, jitter keeps it in [cap/2, cap]
    assert 0.125 <= delays[0] <= 0.25
    assert len(set(delays[20:])) > 1


def test_a_directory_that_drops_each_session_after_bind_is_retried_with_backoff():
    """A directory (or something in front of it) that accepts the login and
    the BIND and then closes the session at once must not be logged in to
    in a tight loop (each login costs it a memory-hard hash): only a session
    that stayed up ``stable_after`` resets the backoff."""
    import time

    async def main() -> None:
        times: List[float] = []
        changed = asyncio.Event()

        async def serve(reader, writer):
            dec = Decoder()
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        return
                    for m in dec.feed(data):
                        writer.write(bytes(Message("ACK", (), "ok")))
                        if m.type == "BIND":
                            times.append(time.monotonic())
                            changed.set()
                            return
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=SERVER_SSL)
        port = server.sockets[0].getsockname()[1]
        # Constant backoff: each retry after a short session waits 50-100 ms.
        client = DirectoryClient("127.0.0.1", port, "alice", "password123",
                                 listen=lambda: ("127.0.0.1", 4000), trust=trusting(),
                                 retry_base=0.1, retry_max=0.1)
        try:
            assert await client.start() is True

            async def reached(n: int) -> None:
                while len(times) < n:
                    changed.clear()
                    await changed.wait()
            await asyncio.wait_for(reached(8), 20)
        finally:
            await client.close()
            server.close()
        # Sessions 1 and 2 may be back to back (a session that ends is
        # re-established at once, once); each later one waits >= 50 ms after
        # the previous one ended, which was after its BIND.  One of slack.
        span = times[-1] - times[0]
        allowed = 3 + int(span / 0.05)
        assert len(times) <= allowed, (
            f"{len(times)} logins in {span * 1000:.1f} ms; the backoff allows {allowed}")

    asyncio.run(main())


@pytest.mark.parametrize("line", [
    "bob,127.0.0.1,\u00b2".encode(),    # a digit to str.isdigit(), not to int()
    b"bob,127.0.0.1,0",
    b"bob,127.0.0.1,70000",             # getaddrinfo would dial port 4464
    b"bob,127.0.0.1," + b"9" * 5000,    # past int()'s digit limit
    b",127.0.0.1,5000",
    b"bob,,5000",
])
def test_a_result_line_with_an_undialable_port_or_an_empty_field_is_skipped(line):
    """Whatever a directory sends, a lookup gives dialable registrations and
    never raises: the line is skipped (and logged), the others are kept."""
    regs = parse_result(line + b"\nalice,127.0.0.2,5000")
    assert regs == [Registration("alice", "127.0.0.2", 5000)]
