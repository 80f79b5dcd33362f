"""The peer's listening port: TLS and plaintext on one port (SPEC §5.1).

A connection whose first byte is ``0x16`` is TLS (the listener presents the
certificate of the peer's identity key, ``identity.listener_context``);
anything else is the plaintext framing, served where ``--plaintext`` allows
its source (loopback by default: seed peers and ``nc`` on this machine).
Refused plaintext gets exactly ``ERR`` ``TLS required``.  The accepting
itself is ``tls.sniff.Acceptor``, the directory's own accept path.

``Listener`` has the surface of the ``asyncio.Server`` it replaces:
``sockets``, ``close()``, ``wait_closed()``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Callable, List, Optional

from ..tls.policy import Plaintext
from ..tls.sniff import Acceptor, FailureLog

__all__ = ["Listener", "listen_sniffing"]

#: How long an accepted connection may stay silent before its first byte.
#: A peer or the directory's probe speaks first, at once; the peer's own
#: idle timeout takes over after that.
FIRST_BYTE_WINDOW = 60.0


class Listener:
    """A listening socket served by an ``Acceptor``."""

    def __init__(self, sock: socket.socket, acceptor: Acceptor) -> None:
        self.sockets: List[socket.socket] = [sock]
        self.acceptor = acceptor
        self._closed = asyncio.get_running_loop().create_future()

    def close(self) -> None:
        if self._closed.done():
            return
        self.acceptor.close()
        for sock in self.sockets:
            sock.close()
        self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await self._closed


async def listen_sniffing(factory: Callable[[], asyncio.Protocol], host: str, port: int,
                          context: Optional[ssl.SSLContext], policy: Plaintext,
                          handshake_timeout: float = 10.0) -> Listener:
    """Listen on ``host:port`` (all addresses for an empty host) and serve
    each connection with ``factory()``, over TLS or plaintext by its first byte.
    Raises ``OSError`` when the address cannot be bound."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and not host:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(addr)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    acceptor = Acceptor(sock, lambda tls, deadline: factory(), context, policy,
                        window=FIRST_BYTE_WINDOW, handshake_timeout=handshake_timeout,
                        failures=FailureLog("TLS handshake with the peer's listener failed"))
    acceptor.start()
    return Listener(sock, acceptor)
