"""A TCP relay that records every byte: an eavesdropper, or a man in the middle.

- ``Relay(upstream)``: forwards bytes as they are, both ways (what a network
  tap sees).  ``captured`` is (client-to-server, server-to-client) bytes of
  all connections so far; a test asserts what it does *not* contain (a
  password, a QUERY result) -- the point of a TLS link.
- ``Relay(upstream, server_ssl=ctx, upstream_ssl=ctx2)``: terminates the
  client's TLS with its own certificate, opens its own TLS session to the
  upstream (``upstream_ssl``; None for plaintext), and forwards the
  decrypted bytes — what an attacker who got a client to accept its
  certificate would read.  ``from_client`` is then the client's plaintext.

The relay runs an asyncio loop in a thread of its own; ``wait(pred)`` blocks
the test until a condition on the relay holds (checked on each event).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from typing import Callable, List, Optional, Tuple

__all__ = ["Relay", "insecure_client_context"]


def insecure_client_context() -> ssl.SSLContext:
    """A TLS client that verifies nothing (the attacker's side of a relay)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Relay:
    def __init__(self, upstream: Tuple[str, int], *, port: int = 0,
                 server_ssl: Optional[ssl.SSLContext] = None,
                 upstream_ssl: Optional[ssl.SSLContext] = None) -> None:
        self.upstream = upstream
        self.server_ssl = server_ssl
        self.upstream_ssl = upstream_ssl
        self.from_client = bytearray()
        self.from_server = bytearray()
        #: connections accepted (with ``server_ssl``: whose handshake completed)
        self.connections = 0
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._server: Optional[asyncio.AbstractServer] = None
        self._tasks: List[asyncio.Task] = []
        started = threading.Event()
        errors: List[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._server = self._loop.run_until_complete(asyncio.start_server(
                    self._serve, "127.0.0.1", port, ssl=server_ssl, reuse_address=True))
            except BaseException as exc:   # reported to the constructor
                errors.append(exc)
                started.set()
                return
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        started.wait(10)
        if errors:
            raise errors[0]
        self.host, self.port = "127.0.0.1", self._server.sockets[0].getsockname()[1]
        self.address = (self.host, self.port)

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    def _note(self, fn: Callable[[], None]) -> None:
        with self._cond:
            fn()
            self._cond.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._note(lambda: setattr(self, "connections", self.connections + 1))
        self._tasks.append(asyncio.current_task())
        try:
            await self._relay(reader, writer)
        finally:
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(
                *self.upstream, ssl=self.upstream_ssl,
                server_hostname="" if self.upstream_ssl is not None else None)
        except OSError:
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       record: bytearray) -> None:
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    self._note(lambda d=data: record.extend(d))
                    dst.write(data)
                    await dst.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        try:
            await asyncio.gather(pump(reader, up_w, self.from_client),
                                 pump(up_r, writer, self.from_server))
        finally:
            up_w.close()

    def wait(self, pred: Callable[[Relay], bool], what: str, timeout: float = 30.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: pred(self), timeout):
                raise AssertionError(f"relay: timeout waiting for {what} "
                                     f"({self.connections} connections)")

    @property
    def captured(self) -> Tuple[bytes, bytes]:
        """(client-to-server bytes, server-to-client bytes) so far."""
        with self._cond:
            return bytes(self.from_client), bytes(self.from_server)

    def client_bytes(self) -> bytes:
        with self._cond:
            return bytes(self.from_client)

    def server_bytes(self) -> bytes:
        with self._cond:
            return bytes(self.from_server)

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for t in self._tasks:
                t.cancel()

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
