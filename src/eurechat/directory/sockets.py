"""The directory's listening socket, made the same way by a single process,
the supervisor and each worker."""

from __future__ import annotations

import socket

__all__ = ["listening_socket"]


def listening_socket(host: str, port: int, reuseport: bool = False,
                     listen: bool = True) -> socket.socket:
    """A TCP listening socket with SO_KEEPALIVE set once: accepted sockets
    inherit it (Linux), so sessions get keepalive without a per-connection
    system call or socket object."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(4096)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
