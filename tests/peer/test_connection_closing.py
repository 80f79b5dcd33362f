"""A connection being closed takes no more writes, over TLS as over TCP:
asyncio's TLS transport raises on a write (or a second close) once closed,
where its TCP transport ignores it, and the delivery path writes from
callbacks that can run after a close (the pair rule closes a connection
while a group commit is about to flush to it)."""

from __future__ import annotations

import asyncio
import ssl

from eurechat.peer.connection import Connection
from eurechat.peer.identity import listener_context, load_identity_key
from eurechat.peer.liveness import Liveness


class _Owner:
    """Takes every call a connection makes to its owner."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def test_write_and_close_after_close_over_tls_are_ignored(tmp_path):
    async def main():
        server_ctx = listener_context(load_identity_key(tmp_path), tmp_path)
        server = await asyncio.get_running_loop().create_server(
            asyncio.Protocol, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
        conn = Connection(_Owner(), Liveness(10.0, 5.0), "bob", True)
        transport, _ = await asyncio.get_running_loop().create_connection(
            lambda: conn, "127.0.0.1", port, ssl=client_ctx, server_hostname="")
        conn.write(b"PING 0\n")
        conn.close()
        conn.close()                # asyncio's TLS transport: _ssl_protocol = None
        conn.write(b"PING 0 x\n")   # raised AttributeError before the guard
        assert transport.is_closing()
        server.close()
        await server.wait_closed()
    asyncio.run(asyncio.wait_for(main(), 20))
