"""One port, two transports (SPEC §5.1): the accept path of every listener.

A connection whose first byte is ``0x16`` (a TLS handshake record) is TLS;
anything else is the plaintext framing, served only where the plaintext
policy allows the source.  There is no STARTTLS: an upgrade inside the
plaintext protocol could be stripped by anyone on the path.

Why the listener accepts sockets itself instead of ``loop.create_server``:
the transport has to be chosen *after* the first byte, and a refused
plaintext client must get exactly ``ERR 12\\nTLS required`` before anything
else is read from it.  So the acceptor accepts, waits until the socket is
readable, peeks one byte (``MSG_PEEK``: the byte stays for the TLS library or
the framing decoder), and only then hands the socket to
``loop.connect_accepted_socket``, with the server's SSL context or without.

The decision itself is ``decide`` -- a pure function of the first byte, the
source address and the policy -- so every rule is unit-tested without a
socket.  ``Acceptor`` is the asyncio edge, shared by the directory now and
the peer's listener later.  What a waiting connection costs: its socket, one
reader registration and one timer -- no protocol, session or TLS object
until the first byte has arrived.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import socket
import ssl
import time
from typing import Callable, Dict, Optional

from .policy import Plaintext, allows

__all__ = ["Verdict", "decide", "TLS_REQUIRED", "TLS_RECORD", "Acceptor", "FailureLog"]

log = logging.getLogger("eurechat.tls.sniff")

#: The first byte of every TLS record that opens a session (handshake).
TLS_RECORD = 0x16
#: What a refused plaintext client gets, byte for byte (then the socket is closed).
TLS_REQUIRED = b"ERR 12\nTLS required"
#: Accepts per readiness callback: bounded, so a connection storm cannot
#: starve the sessions already served.
ACCEPT_BATCH = 128
#: How long a refused socket may take to read its ERR before it is closed.
REFUSE_LINGER = 2.0
#: Descriptor exhaustion: how long accepting pauses before it is retried.
ACCEPT_PAUSE = 0.5


class Verdict(enum.Enum):
    """What to do with a connection, given its first byte."""

    TLS = "tls"              # hand it to the TLS handshake
    PLAINTEXT = "plaintext"  # serve the plaintext framing
    REFUSE = "refuse"        # write TLS_REQUIRED, close, read nothing more
    CLOSED = "closed"        # the client closed before sending anything


def decide(first: bytes, source_ip: str, policy: Plaintext) -> Verdict:
    """The transport of a connection from ``source_ip`` whose first received
    bytes are ``first`` (``b""``: end of stream)."""
    if not first:
        return Verdict.CLOSED
    if first[0] == TLS_RECORD:
        return Verdict.TLS
    if allows(policy, source_ip):
        return Verdict.PLAINTEXT
    return Verdict.REFUSE


class FailureLog:
    """A rationed log of one kind of failure (failed TLS handshakes): a WARNING
    for the first, then at most one summary line per ``interval`` with the
    count since the previous line and the last one's reason.

    Why: anyone can open a socket and send garbage, and scanners do it all
    day; one line per failure would let them fill the disk and bury
    everything else.  A timer writes the summary that is due even when no
    further failure comes, so a count is never lost.  ``clock`` is a
    parameter so the rationing is testable without waiting."""

    def __init__(self, what: str, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = log) -> None:
        self.what = what
        self.interval = interval
        self.clock = clock
        self.log = logger
        self.total = 0
        self.unlogged = 0
        self.last = ""
        self.logged_at: Optional[float] = None
        self._timer: Optional[asyncio.TimerHandle] = None

    def failure(self, source: str, why: str) -> None:
        now = self.clock()
        self.total += 1
        self.unlogged += 1
        self.last = f"{source}: {why}"
        if self.logged_at is None or now - self.logged_at >= self.interval:
            self._write(now)
        else:
            self._schedule(self.logged_at + self.interval - now)

    def flush(self) -> None:
        """Write the summary that is waiting, now (the timer, or shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.unlogged:
            self._write(self.clock())

    def _write(self, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.logged_at is None:
            self.log.warning("%s from %s (further failures are counted and logged at most "
                             "every %g s)", self.what, self.last, self.interval)
        else:
            self.log.warning("%s: %d in the last %.0f s (%d in all); last from %s",
                             self.what, self.unlogged, now - self.logged_at, self.total,
                             self.last)
        self.unlogged = 0
        self.logged_at = now

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a unit test with its own clock): ``flush`` does it
        self._timer = loop.call_later(max(delay, 0.0), self._due)

    def _due(self) -> None:
        self._timer = None
        if self.unlogged:
            self._write(self.clock())


class _Waiting:
    """A connection accepted and not yet classified (no byte received)."""

    __slots__ = ("sock", "source", "deadline", "timer")

    def __init__(self, sock: socket.socket, source: str, deadline: float) -> None:
        self.sock = sock
        self.source = source
        self.deadline = deadline
        self.timer: Optional[asyncio.TimerHandle] = None


ProtocolFactory = Callable[[bool, float], asyncio.Protocol]


class Acceptor:
    """Accepts on ``sock`` and serves each connection over TLS or plaintext.

    ``factory(tls, deadline)`` makes the protocol of a classified connection
    (``deadline``: ``time.monotonic()`` at which its window before
    authentication ends -- the wait for the first byte and the handshake
    count in it).  ``admit(address)`` is asked before anything is committed
    to a new connection (``address``: the client's ``(host, port)``):
    ``None`` admits it, bytes refuse it (they are written and the socket
    closed: the max-connections reply).  ``pending`` counts the connections
    it holds that have no protocol yet, so the limit covers them too.  ``silent``
    is what a plaintext-allowed client that sends nothing within ``window``
    seconds gets before it is closed (the authentication timeout reply).
    """

    def __init__(self, sock: socket.socket, factory: ProtocolFactory,
                 context: Optional[ssl.SSLContext], policy: Plaintext, *,
                 window: float = 30.0, handshake_timeout: float = 10.0,
                 admit: Callable[[tuple], Optional[bytes]] = lambda address: None,
                 silent: bytes = b"", failures: Optional[FailureLog] = None) -> None:
        self.sock = sock
        self.factory = factory
        self.context = context
        self.policy = policy
        self.window = window
        self.handshake_timeout = handshake_timeout
        self.admit = admit
        self.silent = silent
        self.failures = failures or FailureLog("TLS handshake failed")
        self.waiting: Dict[int, _Waiting] = {}          # fd -> not classified yet
        self.starting: Dict[asyncio.Future, str] = {}   # handshakes (and plaintext starts)
        self.refused = 0                                 # plaintext refused by policy
        self.refusing = 0                                # refused, reply being read
        self.handshaking = 0                             # TLS handshakes in progress
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._paused: Optional[asyncio.TimerHandle] = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Connections accepted and not yet handed to a protocol (they count
        against the server's connection limit)."""
        return len(self.waiting) + self.handshaking + self.refusing

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        self._loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting; drop every connection not yet classified or started."""
        if self._closed or self._loop is None:
            return
        self._closed = True
        loop = self._loop
        if self._paused is not None:
            self._paused.cancel()
        else:
            loop.remove_reader(self.sock.fileno())
        for fd, item in list(self.waiting.items()):
            loop.remove_reader(fd)
            if item.timer is not None:
                item.timer.cancel()
            item.sock.close()
        self.waiting.clear()
        for task in list(self.starting):
            task.cancel()
        self.failures.flush()

    # -- accepting ----------------------------------------------------------
    def _accept(self) -> None:
        loop = self._loop
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: retrying at once would spin.
                    log.warning("cannot accept: %s; pausing for %g s", exc.strerror,
                                ACCEPT_PAUSE)
                    loop.remove_reader(self.sock.fileno())
                    self._paused = loop.call_later(ACCEPT_PAUSE, self._resume_accepting)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the client gave up already
                raise
            source = addr[0] if isinstance(addr, tuple) else ""
            refusal = self.admit(addr)
            if refusal is not None:
                try:
                    conn.send(refusal)
                except OSError:
                    pass
                conn.close()
                continue
            conn.setblocking(False)
            fd = conn.fileno()
            item = _Waiting(conn, source, time.monotonic() + self.window)
            self.waiting[fd] = item
            item.timer = loop.call_later(self.window, self._silent, fd)
            loop.add_reader(fd, self._readable, fd)

    def _resume_accepting(self) -> None:
        self._paused = None
        if not self._closed:
            self._loop.add_reader(self.sock.fileno(), self._accept)

    def _silent(self, fd: int) -> None:
        """Nothing arrived within the window: the authentication timeout."""
        item = self.waiting.pop(fd, None)
        if item is None:
            return
        self._loop.remove_reader(fd)
        log.info("closing %s: %s", item.source, "nothing received within the window "
                 "before authentication")
        if self.silent and allows(self.policy, item.source):
            self._refuse(item.sock, self.silent)
        else:
            item.sock.close()

    def _readable(self, fd: int) -> None:
        item = self.waiting.pop(fd, None)
        if item is None:
            return
        loop = self._loop
        loop.remove_reader(fd)
        item.timer.cancel()
        sock = item.sock
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):  # spurious wake-up: wait again
            self.waiting[fd] = item
            item.timer = loop.call_at(loop.time() + max(item.deadline - time.monotonic(), 0),
                                      self._silent, fd)
            loop.add_reader(fd, self._readable, fd)
            return
        except OSError:
            first = b""
        verdict = decide(first, item.source, self.policy)
        if verdict is Verdict.CLOSED:
            sock.close()
        elif verdict is Verdict.REFUSE:
            self.refused += 1
            log.info("refusing plaintext from %s: TLS required (--plaintext %s)",
                     item.source, self.policy.value)
            self._refuse(sock, TLS_REQUIRED)
        else:
            task = loop.create_task(self._start(sock, item.source, item.deadline,
                                                verdict is Verdict.TLS))
            self.starting[task] = item.source
            task.add_done_callback(self._started)

    async def _start(self, sock: socket.socket, source: str, deadline: float,
                     tls: bool) -> None:
        loop = self._loop
        if not tls:
            await loop.connect_accepted_socket(lambda: self.factory(False, deadline), sock)
            return
        if self.context is None:  # a listener without an identity: TLS is refused
            sock.close()
            self.failures.failure(source, "no TLS on this listener")
            return
        # The handshake gets 10 s, and never outlasts the window before
        # authentication (at least a moment, so a late start is not a failure).
        started = time.monotonic()
        timeout = max(min(self.handshake_timeout, deadline - started), 0.5)
        self.handshaking += 1
        try:
            await loop.connect_accepted_socket(lambda: self.factory(True, deadline), sock,
                                               ssl=self.context,
                                               ssl_handshake_timeout=timeout)
        except asyncio.CancelledError:
            raise
        except (asyncio.TimeoutError, OSError, ssl.SSLError, ConnectionError, EOFError) as exc:
            # (uvloop reports the timeout as ConnectionAbortedError, asyncio as TimeoutError.)
            if time.monotonic() - started >= timeout:
                self.failures.failure(source, f"handshake not finished within {timeout:g} s")
            else:
                self.failures.failure(source, _why(exc))
        finally:
            # Done: the protocol counts in its server's connections from here.
            self.handshaking -= 1

    def _started(self, task: asyncio.Future) -> None:
        source = self.starting.pop(task, "?")
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("starting a connection from %s failed", source, exc_info=exc)

    def _refuse(self, sock: socket.socket, reply: bytes) -> None:
        """Write ``reply``, end our side, and close once the client has closed
        too (or after REFUSE_LINGER): closing at once with unread input would
        reset the connection, and the client might never see the reply.
        Whatever the client sends meanwhile is discarded unread."""
        try:
            sock.send(reply)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        loop = self._loop
        fd = sock.fileno()
        timer = None

        def drain() -> None:
            try:
                while sock.recv(65536):
                    pass
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                pass
            done()

        def done() -> None:
            if sock.fileno() == -1:
                return
            self.refusing -= 1
            loop.remove_reader(fd)
            timer.cancel()
            sock.close()

        self.refusing += 1
        timer = loop.call_later(REFUSE_LINGER, done)
        loop.add_reader(fd, drain)


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
