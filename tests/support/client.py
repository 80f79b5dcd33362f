"""Tiny blocking clients for tests: a framed client and a PONG responder.

Both are real sockets on loopback with a timeout on every blocking call, so a
broken server fails a test quickly instead of hanging it.

- ``FramedClient(host, port)``: ``send``/``send_raw``/``recv``/``request``,
  ``login(user, password)``, ``read_until_closed()``; ``tls=context`` speaks
  TLS (``support.tls`` has the contexts).
- ``Responder(mode)``: a listening socket on 127.0.0.1 that answers ``PING``
  with ``PONG`` over plaintext or, with ``tls=`` a server context, TLS
  (``mode="echo"``: echoes the token; ``"bare"``: ``PONG 0``;
  ``"silent"``: accepts and never answers; ``"wrong"``: a wrong token).  Use it
  as a BIND target and to test the liveness checker.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import List, Optional, Tuple, Union

from eurechat.errors import ProtocolError
from eurechat.framing import Decoder, Message, encode

__all__ = ["FramedClient", "Responder", "ConnectionClosed", "closed_port"]

TIMEOUT = 10.0


class ConnectionClosed(Exception):
    """The server closed the connection while a reply was expected."""


class FramedClient:
    """One blocking connection speaking the framing."""

    def __init__(self, host: str, port: int, timeout: float = TIMEOUT,
                 source: Optional[Tuple[str, int]] = None,
                 tls: Optional[ssl.SSLContext] = None) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=source)
        if tls is not None:
            try:
                self.sock = tls.wrap_socket(self.sock)
            except BaseException:
                self.sock.close()
                raise
        self.timeout = timeout
        self.decoder = Decoder(max_payload=64 * 1024 * 1024)
        self.queue: List[Message] = []
        self.eof = False

    @property
    def local_address(self) -> str:
        return self.sock.getsockname()[0]

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, type_: str, *args: str, payload: Union[bytes, str] = b"") -> None:
        self.sock.sendall(encode(type_, args, payload))

    def recv(self, timeout: Optional[float] = None) -> Message:
        """The next message; ConnectionClosed at EOF, TimeoutError if none comes."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while not self.queue:
            if self.eof:
                raise ConnectionClosed("connection closed by the server")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError("no reply in time") from None
            except (ConnectionResetError, ssl.SSLEOFError):
                data = b""
            if not data:
                self.eof = True
                continue
            self.queue.extend(self.decoder.feed(data))
        return self.queue.pop(0)

    def request(self, type_: str, *args: str, payload: Union[bytes, str] = b"",
                timeout: Optional[float] = None) -> Message:
        self.send(type_, *args, payload=payload)
        return self.recv(timeout)

    def login(self, user: str, password: str) -> None:
        reply = self.request("USER", user)
        assert reply == Message("ACK", (), f"hi {user}, authentication required"), reply
        reply = self.request("PASS", password)
        assert reply == Message("ACK", (), "successfully authenticated"), reply

    def read_until_closed(self, timeout: Optional[float] = None) -> List[Message]:
        """Every message until the server closes; TimeoutError if it does not."""
        out = []
        while True:
            try:
                out.append(self.recv(timeout))
            except ConnectionClosed:
                return out

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> FramedClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def closed_port(host: str = "127.0.0.1") -> int:
    """A port with nothing listening (bound then released; loopback only)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Responder:
    """A listening socket that answers PING like a peer would (or not)."""

    def __init__(self, mode: str = "echo", host: str = "127.0.0.1", name: str = "",
                 tls: Optional[ssl.SSLContext] = None) -> None:
        self.mode = mode
        self.tls = tls  # a server context: a TLS listener (what an eurechat/2 peer has)
        self.name = name
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(512)
        self.host, self.port = self.sock.getsockname()[:2]
        self.pings = 0
        self.pinged = threading.Event()
        self._stop = False
        self._conns: List[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        decoder = Decoder()
        try:
            conn.settimeout(30)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                for msg in decoder.feed(data):
                    if msg.type != "PING":
                        continue
                    self.pings += 1
                    self.pinged.set()
                    if self.mode == "echo":
                        conn.sendall(encode("PONG", msg.args))
                    elif self.mode == "bare":
                        conn.sendall(b"PONG 0\n")
                    elif self.mode == "name":
                        conn.sendall(encode("PONG", (self.name,)))
                    elif self.mode == "wrong":
                        conn.sendall(b"PONG 0 not-the-nonce\n")
                    # "silent": never answer
        except (OSError, ssl.SSLError, ProtocolError):
            return
        finally:
            conn.close()

    def close(self) -> None:
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass

    def __enter__(self) -> Responder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
