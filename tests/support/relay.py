"""A recording TCP relay for tests: what an observer on the path would see.

``Relay(target)`` listens on 127.0.0.1, forwards every connection to
``target`` byte for byte, and keeps a copy of everything in both directions
(``captured``: client-to-server and server-to-client bytes of all
connections).  A test then asserts what the capture does *not* contain (a
password, a QUERY result) -- the point of a TLS link.
"""

from __future__ import annotations

import socket
import threading
from typing import List, Tuple

__all__ = ["Relay"]


class Relay:
    def __init__(self, target: Tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.address = self.sock.getsockname()[:2]
        self._lock = threading.Lock()
        self._up: List[bytes] = []    # client -> server
        self._down: List[bytes] = []  # server -> client
        self._socks: List[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def captured(self) -> Tuple[bytes, bytes]:
        """(client-to-server bytes, server-to-client bytes) so far."""
        with self._lock:
            return b"".join(self._up), b"".join(self._down)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._socks += [client, server]
            for src, dst, log in ((client, server, self._up), (server, client, self._down)):
                threading.Thread(target=self._pump, args=(src, dst, log), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, log: List[bytes]) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    log.append(data)
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
