"""The driver of one recipient's route: its outbox, its connection, its
dialling, on the event loop.

A route sends its recipient's unacknowledged messages over the one
connection the pair shares (``outbox.Outbox``: the window, ACK matching);
when it has none it looks the recipient up and dials (``dialing.Dialing``:
backoff, which address is worth a dial), on a timer or at once when the
recipient is seen again.  Of two connections for the pair it keeps the one
the pair rule says (``pairing.settle``).

**Where outgoing connections are made:** ``dial()``, below, the one place.

The owner (the peer's wiring) is reached only through ``RouteOwner``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Callable, Deque, List, NamedTuple, Optional, Protocol, Tuple

from ..tls.policy import Plaintext
from . import transport
from .connection import Connection
from .dialing import Address, Dialing
from .directory_client import DirectoryError
from .outbox import Outbox, OutItem
from .pairing import settle
from .settings import LOG_NAME, Timings

log = logging.getLogger(LOG_NAME)

__all__ = ["Route", "RouteOwner", "Adopted", "dial"]



async def dial(new: Callable[[], Connection], addr: Address, timeout: float,
               context: Optional[ssl.SSLContext] = None,
               policy: Plaintext = Plaintext.LOOPBACK) -> Connection:
    """Connect to a peer at ``addr`` within ``timeout``; the connection
    ``new()`` makes serves it.  Over TLS with ``context``, falling back to
    plaintext for a listener without TLS (a seed peer) where ``policy``
    allows its address (``transport.dial``).  Raises ``OSError`` (a
    ``ConnectionError`` for a refused fallback) or ``asyncio.TimeoutError``."""
    return await transport.dial(new, addr, timeout, context, policy)


class RouteOwner(Protocol):
    """What a route needs of the peer it belongs to."""

    timings: Timings
    loop: asyncio.AbstractEventLoop
    #: TLS for dials (None: plaintext), and where plaintext is allowed
    dial_context: Optional[ssl.SSLContext]
    plaintext: Plaintext

    @property
    def closing(self) -> bool:
        """The peer is shutting down: start nothing new."""

    @property
    def has_directory(self) -> bool:
        """Recipients are looked up in a directory (else fixed addresses)."""

    def live_conn(self, name: str) -> Optional[Connection]:
        """An open connection identified as ``name``'s."""

    async def resolve(self, name: str) -> Optional[Address]:
        """Where ``name`` is (None: not online).  Raises ``DirectoryError``."""

    def new_connection(self, name: str) -> Connection:
        """A connection to dial ``name`` with."""

    def forget(self, name: str) -> None:
        """A dial to ``name``'s looked-up address failed: look it up afresh."""

    def identified(self, conn: Connection) -> None:
        """``conn`` (just dialled) speaks for its remote: adopt it."""

    def link_for(self, name: str, addr: Address) -> Tuple[ssl.SSLContext, Optional[str],
                                                           Plaintext]:
        """How to dial ``name`` at ``addr``: (TLS context, the key fingerprint
        its certificate must carry -- None: a link that is not authenticated
        --, where a listener without TLS may be dialled in plaintext).
        Raises ``ConnectionError`` saying why no link is allowed."""

    def listener_problem(self, name: str, conn: Connection,
                         fp: Optional[str]) -> Optional[str]:
        """What is wrong with the listener ``conn`` reached (None: it is
        ``name``, with key ``fp`` when given); certifies ``conn`` if right."""

    def link_refused(self, name: str, reason: str) -> None:
        """Tell the user: no link to ``name`` (its messages stay queued)."""

    def acked(self, route: Route, done: List[OutItem]) -> None:
        """``route``'s recipient acknowledged; ``done`` left its queue."""

    def unreachable(self, route: Route, queued: int, reason: str) -> None:
        """Tell the user: ``route``'s recipient cannot be reached now."""


class Adopted(NamedTuple):
    """What ``Route.adopt`` did with a second connection for the pair."""

    keep: Connection
    lose: Connection
    abort_loser: bool   #: drop the loser with its buffer (else close it)
    probe_kept: bool    #: PING the kept one: it may be dead without our knowing


class _Waiting(ConnectionError):
    """The recipient is still at an address whose backoff has not run out."""


class Route:
    """Everything about sending to one recipient: its queue, connection, backoff."""

    def __init__(self, owner: RouteOwner, name: str, backoff: Callable[[int], float]) -> None:
        self.owner = owner
        self.name = name
        t = owner.timings
        self.outbox = Outbox(t.window)
        self.dialing = Dialing(backoff, t.lookup_interval)
        self.conn: Optional[Connection] = None
        self.timer: Optional[asyncio.TimerHandle] = None
        self.connecting: Optional[asyncio.Task] = None

    @property
    def queue(self) -> Deque[OutItem]:
        """The unacknowledged messages, in seq order."""
        return self.outbox.queue

    @property
    def sent(self) -> int:
        """How many of ``queue`` went out on ``conn``: those in flight."""
        return self.outbox.sent

    @property
    def attempt(self) -> int:
        """Failures since the route last proved itself with an ACK."""
        return self.dialing.attempt

    @property
    def connected(self) -> bool:
        """Has a connection that is still open (a lost one does not count)."""
        return self.conn is not None and not self.conn.closed

    def in_flight(self, conn: Connection) -> int:
        """Messages sent on ``conn`` and not acknowledged (0 if we do not
        send over it)."""
        return self.outbox.sent if conn is self.conn else 0

    def enqueue(self, item: OutItem) -> None:
        self.outbox.enqueue(item)

    def use(self, conn: Optional[Connection]) -> None:
        """Send over ``conn`` from now on: everything unacknowledged goes again."""
        if conn is not None and conn.closed:
            # Already lost (its connection_lost has run and will not run
            # again): adopting it would leave the route "connected" to
            # nothing, and nothing would ever dial again.
            conn = None
        if conn is self.conn:
            return
        self.conn = conn
        self.outbox.restart()
        if conn is not None:
            self.cancel_timer()
        self.pump()   # send, or (no connection after all) get one

    def adopt(self, conn: Connection, me: str) -> Optional[Adopted]:
        """``conn`` (open, identified as the recipient's) is offered: use it
        if there is no other; else keep the one the pair rule says and
        report the other (for the caller to take off the table and close)."""
        current = self.conn
        if current is None or current.closed or current is conn:
            # No backoff reset here: only an ACK proves the route (on_ack).
            self.use(conn)
            return None
        rule = settle(me, self.name, current.dialled, conn.dialled)
        keep, lose = (conn, current) if rule.keep_new else (current, conn)
        log.debug("duplicate connection with %s: keeping %r, closing %r", self.name, keep, lose)
        self.use(keep)
        return Adopted(keep, lose, rule.abort_loser, rule.probe_kept)

    def lost(self, conn: Connection, other: Optional[Connection]) -> None:
        """``conn`` is closed.  If we sent over it: go on over ``other``, or
        redial (at once if it had proved itself, else after the backoff)."""
        if conn is not self.conn:
            return
        self.conn = None
        self.outbox.restart()
        if other is not None:
            self.use(other)
        elif not self.owner.closing and self.outbox:
            self.connect_soon(self.dialing.lost(conn.addr, self.owner.loop.time()))

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def stop(self) -> None:
        """The peer shuts down: no timer, no dial under way."""
        self.cancel_timer()
        if self.connecting is not None:
            self.connecting.cancel()

    def pump(self) -> None:
        """Send what the window allows, or get a connection if there is none."""
        conn = self.conn
        if conn is None or conn.closed:
            if self.outbox and self.connecting is None and self.timer is None:
                self.connect_soon(self.dialing.first_delay())
            return
        if conn.paused:
            return
        data = self.outbox.take()
        if data is not None:
            conn.write(data, answer_due=True)

    def on_ack(self, msgid: Optional[str], conn: Connection) -> None:
        """An ACK arrived on ``conn``.  Only the connection we send over can
        acknowledge: an ACK on any other connection claiming this recipient's
        name (an impostor we never sent to) would delete messages the
        recipient never got."""
        if conn is not self.conn:
            log.debug("ignoring an ACK from %r: not the connection we send to %s over",
                      conn, self.name)
            return
        done = self.outbox.ack(msgid)
        if done is None:
            return   # a duplicate ACK (we sent it twice), or nothing in flight
        self.dialing.proved()
        self.owner.acked(self, done)

    def connect_soon(self, delay: Optional[float] = None) -> None:
        """Dial after ``delay`` (None: the backoff for the current attempt)."""
        if self.connecting is not None:
            return
        self.cancel_timer()
        if delay is None:
            delay = self.dialing.delay(self.owner.loop.time(), self.owner.has_directory)
        if delay <= 0:
            self.connecting = asyncio.ensure_future(self._connect())
        else:
            self.timer = self.owner.loop.call_later(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self.timer = None
        if not self.connected and self.connecting is None and not self.owner.closing:
            self.connecting = asyncio.ensure_future(self._connect())

    def wake(self) -> None:
        """The recipient was just seen: retry now instead of waiting out the backoff."""
        if self.outbox and not self.connected and self.connecting is None:
            self.cancel_timer()
            self.connecting = asyncio.ensure_future(self._connect())

    def connect_now(self) -> asyncio.Task:
        """Try to reach the recipient now (unless a try is under way); the
        task of the try (its result: True if it got a connection)."""
        if self.connecting is None:
            self.cancel_timer()
            self.connecting = asyncio.ensure_future(self._connect())
        return self.connecting

    def unregistered(self) -> None:
        """The directory says the recipient is not registered (see
        ``Dialing.unregistered``)."""
        self.dialing.unregistered()

    async def _connect(self) -> bool:
        owner = self.owner
        name = self.name
        try:
            conn = owner.live_conn(name)
            if conn is None:
                addr = await owner.resolve(name)
                if self.connected:       # an incoming connection won meanwhile
                    return True
                if addr is None:
                    raise ConnectionError(f"{name} is not online")
                conn = owner.live_conn(name)
                if conn is None and not self.dialing.may_dial(addr, owner.loop.time()):
                    raise _Waiting(f"{name} at {addr[0]}:{addr[1]} was unreachable; "
                                   "waiting for its backoff or a new address")
                if conn is None:
                    conn = await self._dial(addr)
            self.connecting = None
            owner.identified(conn)
            return True
        except asyncio.CancelledError:
            raise
        except _Waiting as exc:
            # Not a new failure: a lookup found the recipient still at the
            # address that failed, whose backoff has not run out.
            log.debug("not dialling %s yet: %s", name, exc)
            return False
        except (ConnectionError, DirectoryError) as exc:
            log.debug("cannot reach %s: %s", name, exc)
            queued = len(self.outbox)
            if self.dialing.unreachable(queued > 0):
                log.info("%s unreachable (%s); %d message(s) stay queued", name, exc, queued)
                owner.unreachable(self, queued, str(exc))
            return False
        finally:
            if self.connecting is asyncio.current_task():
                self.connecting = None
            if not self.connected and self.outbox and not owner.closing and \
                    self.timer is None and self.connecting is None:
                self.connect_soon(None)

    async def _dial(self, addr: Address) -> Connection:
        """Dial the recipient at ``addr``; a failure counts against that address."""
        owner = self.owner
        name = self.name
        try:
            context, fp, policy = owner.link_for(name, addr)
        except ConnectionError as exc:
            self.dialing.failed(addr, owner.loop.time())
            owner.link_refused(name, str(exc))
            raise
        try:
            conn = await dial(lambda: owner.new_connection(name), addr,
                              owner.timings.connect_timeout, context, policy)
        except (OSError, asyncio.TimeoutError) as exc:
            owner.forget(name)
            self.dialing.failed(addr, owner.loop.time())
            if fp is not None and "certificate verify failed" in str(exc):
                owner.link_refused(name, f"{name} at {addr[0]}:{addr[1]} is refused: its "
                                   f"certificate is not issued by the directory CA ({exc}); "
                                   "nothing was sent, the messages stay queued")
            raise ConnectionError(f"{name} at {addr[0]}:{addr[1]}: "
                                  f"{exc or exc.__class__.__name__}") from None
        if fp is not None and not conn.closed:
            # Checked before a single byte of ours is written (SPEC §5.4).
            problem = owner.listener_problem(name, conn, fp)
            if problem is not None:
                conn.abort()
                owner.forget(name)
                self.dialing.failed(addr, owner.loop.time())
                owner.link_refused(name, problem)
                raise ConnectionError(problem)
        if conn.closed:
            # Reset as soon as it was made (e.g. a listener that died with us
            # in its accept queue): its connection_lost has already run, so
            # it is a failed dial, not a connection.
            owner.forget(name)
            self.dialing.failed(addr, owner.loop.time())
            raise ConnectionError(f"{name} at {addr[0]}:{addr[1]}: "
                                  "connection lost as soon as it was made")
        conn.addr = addr
        log.debug("dialled %s at %s", name, addr)
        return conn
