"""Outgoing TCP and TLS for the peer: one connect, a handshake, a fallback.

Why the TCP connect is apart from the handshake: a peer that refuses the
connection is unreachable, while one that accepts it and then does not
complete a TLS handshake is a listener without TLS (a seed peer, the course's
directory) -- and only that one may be tried again in plaintext, where the
plaintext policy allows its address.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Callable, Optional, Tuple, TypeVar

from ..tls.contexts import probe_context
from ..tls.policy import Plaintext, allows

__all__ = ["tcp_connect", "dial_context", "dial", "HANDSHAKE_ERRORS"]

P = TypeVar("P", bound=asyncio.BaseProtocol)

#: What a handshake that did not complete raises (the server spoke
#: plaintext, closed, reset, or stayed silent).
HANDSHAKE_ERRORS = (ssl.SSLError, OSError, EOFError, asyncio.TimeoutError,
                    asyncio.IncompleteReadError)


async def tcp_connect(host: str, port: int) -> socket.socket:
    """A connected, non-blocking TCP socket to ``host:port`` (each address in turn)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: Optional[OSError] = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError(f"no address for {host}")


def dial_context() -> ssl.SSLContext:
    """The TLS 1.3 client context of peer-to-peer links.  The listener's
    certificate is not checked: it is self-signed until keys are bound to
    names, so the link is encrypted against whoever listens on the path,
    not authenticated."""
    return probe_context()


async def dial(factory: Callable[[], P], addr: Tuple[str, int], timeout: float,
               context: Optional[ssl.SSLContext], policy: Plaintext) -> P:
    """Connect to ``addr`` and serve the connection with ``factory()``.

    With ``context``: TLS; a listener that accepts the connection but
    completes no handshake within ``timeout`` is dialled again in plaintext
    if ``policy`` allows its address, else ``ConnectionError``.  Without
    ``context``: plaintext.  Raises ``OSError``/``asyncio.TimeoutError``
    when ``addr`` cannot be reached."""
    loop = asyncio.get_running_loop()
    if context is not None:
        sock = await asyncio.wait_for(tcp_connect(*addr), timeout)
        try:
            _, protocol = await asyncio.wait_for(loop.create_connection(
                factory, sock=sock, ssl=context, server_hostname="",
                ssl_handshake_timeout=timeout), timeout + 1)
            return protocol
        except HANDSHAKE_ERRORS as exc:
            sock.close()
            if not allows(policy, addr[0]):
                raise ConnectionError(
                    f"no TLS handshake ({exc or exc.__class__.__name__}), and --plaintext "
                    f"{policy.value} does not allow plaintext to {addr[0]}") from None
    _, protocol = await asyncio.wait_for(
        loop.create_connection(factory, addr[0], addr[1]), timeout)
    return protocol
