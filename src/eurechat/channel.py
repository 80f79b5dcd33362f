"""A blocking, thread-safe message channel over TCP: ``MSG <len>\\n<bytes>``.

The seed lecture's socket helpers had two classic bugs: ``recv(length)`` may
return fewer bytes than asked, and two threads writing at once interleave
their bytes.  ``Channel`` fixes both: ``recv()`` returns exactly one whole
payload, however the bytes were split on the way (it uses the framing
``Decoder``), and ``send()`` writes each frame under a lock with
``sendall``, so concurrent senders never interleave.  Concurrent receivers
each get whole messages too (a second lock).

    with Channel.connect("127.0.0.1", 9000) as ch:
        ch.send(b"hello")
        print(ch.recv())

    with Channel.listen("127.0.0.1", 9000) as listener:
        for ch in listener:          # one Channel per accepted connection
            ...
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import deque
from typing import Iterator, Optional, Tuple, Union

from .errors import FrameTooLarge, ProtocolError
from .framing import Decoder, Oversized

__all__ = ["Channel", "Listener", "ChannelClosed", "MAX_PAYLOAD"]

#: Default largest payload ``recv()`` accepts.
MAX_PAYLOAD = 64 * 1024 * 1024

Buffer = Union[bytes, bytearray, memoryview]



def _shutdown_and_close(sock: socket.socket) -> None:
    """``shutdown`` before ``close``: closing alone does not wake a thread
    blocked in ``recv``/``accept`` on the same socket; shutting it down does."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()

class ChannelClosed(EOFError):
    """The channel is closed (by us, or the other side closed its end)."""


class Channel:
    """One framed, bidirectional, blocking connection.  Safe to share between threads."""

    def __init__(self, sock: socket.socket, max_payload: int = MAX_PAYLOAD) -> None:
        self.sock = sock
        self._decoder = Decoder(max_payload=max_payload)
        self._queue: deque = deque()
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._closed = False
        self._eof = False
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- construction -----------------------------------------------------
    @classmethod
    def connect(cls, host: str, port: int, timeout: Optional[float] = None,
                max_payload: int = MAX_PAYLOAD) -> Channel:
        """Connect to a listening Channel (``timeout`` applies to connecting only)."""
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.settimeout(None)
        return cls(sock, max_payload)

    @staticmethod
    def listen(host: str, port: int, backlog: int = 128,
               max_payload: int = MAX_PAYLOAD) -> Listener:
        """Listen on ``host:port`` (0: a free port, see ``Listener.address``);
        iterate over the result to accept Channels."""
        return Listener(host, port, backlog, max_payload)

    # -- I/O ----------------------------------------------------------------
    def send(self, data: Buffer) -> None:
        """Send ``data`` as one message.  Whole frames only, even with many senders."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"Channel.send needs bytes, not {data.__class__.__name__}")
        header = b"MSG %d\n" % len(data)
        with self._send_lock:
            if self._closed:
                raise ChannelClosed("channel is closed")
            try:
                if len(data) <= 65536:
                    self.sock.sendall(header + bytes(data))
                else:
                    self.sock.sendall(header)
                    self.sock.sendall(data)
            except OSError as exc:
                if self._closed:
                    raise ChannelClosed("channel is closed") from None
                raise ChannelClosed(f"connection lost: {exc}") from exc

    def recv(self) -> bytes:
        """The next whole message.  Raises ``ChannelClosed`` at the end of the
        stream, ``FrameTooLarge`` for a message over ``max_payload`` (skipped;
        the channel stays usable), ``ProtocolError`` for a stream that is not
        ``MSG`` frames (the channel is then closed)."""
        with self._recv_lock:
            while not self._queue:
                if self._eof or self._closed:
                    raise ChannelClosed("channel is closed")
                try:
                    data = self.sock.recv(262144)
                except OSError as exc:
                    if self._closed:
                        raise ChannelClosed("channel is closed") from None
                    raise ChannelClosed(f"connection lost: {exc}") from exc
                if not data:
                    self._eof = True
                    if self._decoder.in_frame:
                        raise ChannelClosed("connection closed in the middle of a message")
                    raise ChannelClosed("the other side closed the channel")
                try:
                    self._queue.extend(self._decoder.feed(data))
                except ProtocolError as exc:
                    self._queue.extend(exc.messages)
                    self._queue.append(exc)
            item = self._queue.popleft()
            if isinstance(item, ProtocolError):
                self.close()
                raise item
            if item.__class__ is Oversized:
                raise FrameTooLarge(
                    f"message too large ({item.length} > {self._decoder.max_payload} bytes)",
                    type=item.type, args=item.args, length=item.length,
                    limit=self._decoder.max_payload)
            if item.type != "MSG" or item.args:
                self.close()
                raise ProtocolError(f"expected 'MSG <len>', got a {item.type} frame")
            return item.payload

    def close(self) -> None:
        """Close both directions; a thread blocked in ``recv()`` gets ChannelClosed."""
        if self._closed:
            return
        self._closed = True
        _shutdown_and_close(self.sock)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def peer_address(self) -> Tuple[str, int]:
        return self.sock.getpeername()[:2]

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[bytes]:
        """Messages until the other side closes."""
        while True:
            try:
                yield self.recv()
            except ChannelClosed:
                return


class Listener:
    """A listening socket that yields a ``Channel`` per accepted connection."""

    def __init__(self, host: str, port: int, backlog: int = 128,
                 max_payload: int = MAX_PAYLOAD) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(backlog)
        self.max_payload = max_payload
        self._closed = False

    @property
    def address(self) -> Tuple[str, int]:
        """The real (host, port), useful after listening on port 0."""
        return self.sock.getsockname()[:2]

    def accept(self) -> Channel:
        try:
            sock, _ = self.sock.accept()
        except OSError as exc:
            raise ChannelClosed(f"listener closed: {exc}") from None
        return Channel(sock, self.max_payload)

    def __iter__(self) -> Iterator[Channel]:
        while not self._closed:
            try:
                yield self.accept()
            except ChannelClosed:
                return

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _shutdown_and_close(self.sock)

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

