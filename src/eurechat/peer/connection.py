"""One peer connection's transport edge: an ``asyncio.Protocol`` around the
sans-IO ``PeerProtocol``.

It counts what the liveness rule needs (when anything last arrived, when we
first wrote something owing us an answer after that, bytes written and not
yet taken by the remote TCP) and hands decoded events to its owner; it
decides nothing.  The owner (``connections.Connections``) is reached only
through ``ConnectionOwner``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import sys
import termios
import time
from typing import List, Optional, Protocol, Tuple

from cryptography import x509

from ..tls.enrolment import is_directory, user_of
from ..tls.fingerprint import fingerprint
from .liveness import Liveness
from .protocol import Event, PeerProtocol

#: Linux's SIOCOUTQ (== TIOCOUTQ): bytes in a TCP socket's send queue that
#: the remote has not acknowledged yet.  Elsewhere only our own buffer counts.
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None) if sys.platform.startswith("linux") else None


class ConnectionOwner(Protocol):
    """What a connection tells the one who keeps it."""

    def connection_made(self, conn: Connection) -> None:
        """``conn`` is open."""

    def events_received(self, conn: Connection, events: List[Event],
                        was: Optional[str]) -> None:
        """``conn`` decoded ``events``; ``was``: its remote name before them."""

    def answer_due(self, conn: Connection) -> None:
        """We wrote something on ``conn`` that the remote owes an answer to."""

    def connection_lost(self, conn: Connection) -> None:
        """``conn`` is closed (for whatever reason); it will say nothing more."""

    def writing_resumed(self, conn: Connection) -> None:
        """``conn``'s transport takes writes again after a pause."""


class Connection(asyncio.Protocol):
    """Transport edge of one peer connection (dialled by us, or accepted)."""

    def __init__(self, owner: ConnectionOwner, live: Liveness, remote: Optional[str] = None,
                 dialled: bool = False) -> None:
        self.owner = owner
        self.proto = PeerProtocol(remote)
        self.dialled = dialled
        self.transport: Optional[asyncio.Transport] = None
        self.closed = False
        self.paused = False
        self.peername = None
        self.frame_since = 0.0   # when the unfinished frame started (0: none)
        self.addr: Optional[Tuple[str, int]] = None   # the address we dialled (dialled only)
        self.last_rx = time.monotonic()   # when the remote last sent us anything
        self.tx_since = 0.0   # first write owing us an answer after last_rx (<= last_rx: none)
        self.written = 0      # bytes handed to the transport
        self.fd = -1
        self.live = live
        #: the other side's user as its certificate proves it (an accepted
        #: TLS connection: at the handshake; a dialled one: once the
        #: dialler checked the listener), else None
        self.cert_user: Optional[str] = None
        #: the other side's key fingerprint, with ``cert_user``
        self.cert_fingerprint: Optional[str] = None
        #: what arrives here comes from ``cert_user`` (SPEC §5.4 "verified")
        self.verified = False
        #: the directory's BIND check or liveness probe
        self.directory_probe = False

    @property
    def remote(self) -> Optional[str]:
        """The name this connection speaks for (None until identified)."""
        return self.proto.remote

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with contextlib.suppress(Exception):
                self.fd = sock.fileno()
        self.peername = transport.get_extra_info("peername")
        if not self.dialled:
            self._take_certificate(transport.get_extra_info("ssl_object"))
        self.owner.connection_made(self)

    def _take_certificate(self, ssl_object) -> None:
        """An accepted TLS connection speaks for the user its client
        certificate names (the listener required one chained to the directory
        CA) or is the directory's probe."""
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            return
        if is_directory(der):
            self.directory_probe = self.proto.probe_only = True
            return
        user = user_of(der)
        if user is not None:
            self.certify(user, fingerprint(x509.load_der_x509_certificate(der).public_key()))

    def certify(self, user: str, fp: str) -> None:
        """The other side proved (by certificate) that it is ``user``."""
        self.cert_user, self.cert_fingerprint = user, fp
        self.verified = True
        self.proto.certified = user

    def data_received(self, data: bytes) -> None:
        was = self.proto.remote
        self.last_rx = time.monotonic()
        events = self.proto.receive(data)
        if self.proto.decoder.in_frame:
            if not self.frame_since:
                self.frame_since = time.monotonic()
        else:
            self.frame_since = 0.0
        if events:
            self.owner.events_received(self, events, was)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.owner.connection_lost(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.owner.writing_resumed(self)

    def write(self, data: bytes, answer_due: bool = False) -> None:
        """``answer_due``: the remote owes us an answer to ``data`` (our
        MESSAGEs an ACK, our PING a PONG), so the wait for one (``Liveness``)
        starts here if it has not yet.  Our ACKs and PONGs owe us nothing:
        counting from one of them would make a reply sent long after we
        acknowledged the other side look silent for all that while."""
        # A closing transport takes nothing (what was not ACKed is resent on
        # another connection); asyncio's TLS transport raises once closed
        # instead of ignoring the write as its TCP transport does.
        if not self.closed and self.transport is not None \
                and not self.transport.is_closing():
            if answer_due:
                if self.tx_since <= self.last_rx:
                    self.tx_since = time.monotonic()
                self.owner.answer_due(self)
            self.written += len(data)
            self.transport.write(data)

    def close(self) -> None:
        """Close once what is buffered is sent."""
        if not self.closed and self.transport is not None \
                and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Close now, dropping what is buffered (``close`` would wait for a
        buffer that a dead remote never drains, and never report the loss)."""
        if not self.closed and self.transport is not None:
            self.transport.abort()

    @property
    def closing(self) -> bool:
        """A close is under way (or done): the transport takes no more writes."""
        return self.transport is not None and self.transport.is_closing()

    def progress(self) -> Tuple[int, int]:
        """(bytes the remote TCP has taken, bytes of ours it has not yet)."""
        outstanding = self.transport.get_write_buffer_size() if self.transport else 0
        if _SIOCOUTQ is not None and self.fd >= 0:
            with contextlib.suppress(OSError, ValueError):
                outstanding += struct.unpack(
                    "i", fcntl.ioctl(self.fd, _SIOCOUTQ, b"\0\0\0\0"))[0]
        return self.written - outstanding, outstanding

    def __repr__(self) -> str:
        return (f"<conn {'to' if self.dialled else 'from'} {self.remote or '?'} "
                f"{self.peername}>")


__all__ = ["Connection", "ConnectionOwner"]
