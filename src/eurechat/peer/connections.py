"""The table of peer connections, their sweep, and the listener.

Every open connection is in ``all``; those identified (we dialled them, or
the directory confirmed the name an incoming one claims) are also under
their remote's name; those that may owe us an answer (written to with
``answer_due``, or probed) are ``watched``.  The sweep closes what must not
stay open (a frame unfinished for ``frame_timeout``, nothing received for
``idle_timeout``) and applies the liveness rule (``liveness.Liveness``) to
the watched ones.

**Where connections come from.**  Incoming: ``listen()``, below, the one
place the peer's listening socket is made.  Outgoing: ``route.dial()``.
Both build ``connection.Connection`` through ``Connections.new``.

The owner (the peer's wiring) is reached only through ``TableOwner``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Dict, List, Optional, Protocol, Set

from ..tls.policy import Plaintext
from .connection import Connection
from .listener import Listener, listen_sniffing
from .liveness import Liveness, Verdict
from .protocol import Event, encode_ping
from .settings import LOG_NAME, Timings

log = logging.getLogger(LOG_NAME)


class TableOwner(Protocol):
    """What the table needs of the peer it serves."""

    def in_flight(self, conn: Connection) -> int:
        """Our messages sent on ``conn`` and not yet acknowledged."""

    def connection_dead(self, conn: Connection) -> None:
        """The liveness rule gave ``conn`` up (it is aborted next)."""

    def events_received(self, conn: Connection, events: List[Event],
                        was: Optional[str]) -> None:
        """``conn`` decoded ``events``; ``was``: its remote name before them."""

    def connection_lost(self, conn: Connection) -> None:
        """``conn`` is closed and out of the table."""

    def writing_resumed(self, conn: Connection) -> None:
        """``conn`` takes writes again."""

    def full_sweep(self) -> None:
        """The sweep's slow pass ran (housekeeping at that pace)."""


async def listen(connections: Connections, host: str, port: int,
                 context: Optional[ssl.SSLContext], policy: Plaintext) -> Listener:
    """Listen for peers at ``host``:``port`` (``host`` empty: every
    interface), TLS and plaintext on the one port (``listener``).  Each
    accepted connection becomes a ``Connection`` of ``connections``,
    unidentified until its first MESSAGE names a sender."""
    return await listen_sniffing(connections.new, host, port, context, policy)


class Connections:
    """The open connections, by name and in all; implements
    ``connection.ConnectionOwner`` for each of them."""

    def __init__(self, owner: TableOwner, timings: Timings) -> None:
        self.owner = owner
        self.timings = timings
        self.by_name: Dict[str, Set[Connection]] = {}
        self.all: Set[Connection] = set()
        #: connections that may owe us an answer (written to with
        #: ``answer_due``, or probed): what the sweep's fast pass checks
        self.watched: Set[Connection] = set()

    def new(self, remote: Optional[str] = None, dialled: bool = False) -> Connection:
        """A connection for a transport about to be made (accepted, or
        dialled to ``remote``)."""
        t = self.timings
        return Connection(self, Liveness(t.ack_timeout, t.ping_timeout), remote, dialled)

    # -- the table ------------------------------------------------------------
    def live(self, name: str) -> Optional[Connection]:
        """An open connection identified as ``name``'s, if there is one."""
        for conn in self.by_name.get(name, ()):
            if not conn.closed:
                return conn
        return None

    def identify(self, conn: Connection) -> None:
        """``conn`` speaks for ``conn.remote`` from now on."""
        assert conn.remote is not None
        self.by_name.setdefault(conn.remote, set()).add(conn)

    def drop(self, conn: Connection, abort: bool) -> None:
        """Take ``conn`` off its name and close it (``abort``: with what is
        buffered, nobody will read it)."""
        conns = self.by_name.get(conn.remote) if conn.remote is not None else None
        if conns is not None:
            conns.discard(conn)
        if abort:
            conn.abort()
        else:
            conn.close()

    def close_all(self) -> None:
        for conn in list(self.all):
            conn.close()

    # -- ConnectionOwner ------------------------------------------------------
    def connection_made(self, conn: Connection) -> None:
        self.all.add(conn)

    def events_received(self, conn: Connection, events: List[Event],
                        was: Optional[str]) -> None:
        self.owner.events_received(conn, events, was)

    def answer_due(self, conn: Connection) -> None:
        self.watched.add(conn)

    def connection_lost(self, conn: Connection) -> None:
        self.all.discard(conn)
        self.watched.discard(conn)
        if conn.remote is not None:
            conns = self.by_name.get(conn.remote)
            if conns is not None:
                conns.discard(conn)
        self.owner.connection_lost(conn)

    def writing_resumed(self, conn: Connection) -> None:
        self.owner.writing_resumed(conn)

    # -- liveness -------------------------------------------------------------
    def check_live(self, conn: Connection, now: float) -> None:
        """Probe ``conn`` or give it up, as ``Liveness`` says (see there)."""
        in_flight = self.owner.in_flight(conn)
        live = conn.live
        if not live.probing:
            if not in_flight:
                # Nothing owed (an idle connection: only the idle timeout
                # applies): not watched until we send something on it again.
                self.watched.discard(conn)
                return
            if not live.due(now, True, conn.last_rx, conn.tx_since):
                return   # not silent for long: no byte count (an ioctl) to take yet
        verdict = live.check(now, in_flight > 0, conn.last_rx, conn.tx_since, *conn.progress())
        if verdict is Verdict.PROBE:
            log.info("%r: %d message(s) unacknowledged and nothing received for %.1f s: "
                     "probing with PING", conn, in_flight, now - max(conn.last_rx, conn.tx_since))
            conn.write(encode_ping("probe"))
        elif verdict is Verdict.DEAD:
            log.warning("%r: no answer to a PING within %.1f s (nothing received for %.1f s, "
                        "%d message(s) unacknowledged): the other side is gone or the "
                        "connection half-open; closing it, to look %s up and send again",
                        conn, live.ping_timeout, now - conn.last_rx, in_flight, conn.remote)
            self.owner.connection_dead(conn)
            conn.abort()

    def probe_now(self, conn: Connection) -> None:
        """Doubt ``conn`` at once: PING it; the sweep closes it if nothing at
        all comes back within ``ping_timeout`` (``Liveness``)."""
        if conn.live.probing or conn.closed:
            return
        conn.live.probe_now(time.monotonic(), conn.progress()[0])
        self.watched.add(conn)
        conn.write(encode_ping("probe"))

    # -- the sweep ------------------------------------------------------------
    async def sweep(self) -> None:
        """Close connections stuck in the middle of a frame (SPEC: a frame once
        started must complete within ``frame_timeout``), so a slow or stalled
        sender cannot pin buffers forever; and connections on which the
        remote sent nothing for ``idle_timeout`` (not even the ACK of what we
        sent), so idle or abandoned connections do not pin file descriptors
        forever.  Closing an idle pair connection costs nothing: the next
        message dials again, and anything unacknowledged is sent again.

        And a connection that owes us ACKs but has gone silent is probed with
        a PING and, if that goes unanswered too, closed as dead (``Liveness``),
        so our messages are sent again over a new one within seconds instead
        of waiting out the idle timeout.  Runs until cancelled."""
        t = self.timings
        limit = t.frame_timeout
        idle = t.idle_timeout
        full = max(0.05, min(10.0, limit / 2, idle / 2))
        period = full
        if t.ack_timeout > 0:
            # Quarters: a dead connection is given up at most half a
            # ping_timeout and a quarter of an ack_timeout late.  Only the
            # watched connections are looked at this often; all of them at
            # the slow pace (10 k connections cost some 20 ms a pass).
            period = max(0.05, min(full, t.ack_timeout / 4, t.ping_timeout / 4))
        next_full = time.monotonic() + full
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in list(self.watched):
                self.check_live(conn, now)
            if now < next_full:
                continue
            next_full = now + full
            self.owner.full_sweep()
            for conn in list(self.all):
                if conn.frame_since and now - conn.frame_since > limit:
                    if not self._closed_before(conn):
                        log.warning("%r: frame unfinished after %.0f s, closing", conn, limit)
                        conn.close()
                elif now - conn.last_rx > idle:
                    if not self._closed_before(conn):
                        log.info("%r: idle for %.0f s, closing", conn, now - conn.last_rx)
                        conn.close()

    @staticmethod
    def _closed_before(conn: Connection) -> bool:
        """``conn`` was closed by an earlier sweep and is still here: the
        graceful close waits for our unsent bytes, which this remote does not
        take (a shut window, a vanished host; TCP gives up after minutes, or
        never).  Abort it; True if it was closing."""
        if conn.closing:
            conn.abort()
            return True
        return False


__all__ = ["Connections", "TableOwner", "listen"]
