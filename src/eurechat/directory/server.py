"""The asyncio front end: sockets in, ``Session`` objects, effects carried out.

One ``DirectoryProtocol`` per connection (``asyncio.Protocol``, not streams:
no task and no StreamReader per idle connection, which keeps an idle session
to a few kilobytes).  The replies produced by one read go out in one
``write``.  Backpressure: a session produces at most ``high_water`` bytes of
replies before it checks the transport; when the transport's buffer is above
the high-water mark (``pause_writing``) the connection is no longer read and
queued requests wait; ``resume_writing`` continues where it stopped.

Effects (password checks, BIND probes, registry writes) run as tasks; while
one runs, the session is not read from either, so a pipelining client can
never make a worker queue unbounded work.  Every backend failure is turned
into ``Result.UNAVAILABLE`` in one place (``Services.perform``): the client
gets ``ERR directory unavailable, retry later`` and keeps its session, and the
outage is logged once, then summarised (``OutageLog``), never once per request.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Set

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..tls import enrolment
from ..tls.contexts import listener_problem, probe_context
from ..tls.fingerprint import fingerprint
from ..tls.identity import DirectoryIdentity
from ..tls.policy import Plaintext
from ..tls.sniff import Acceptor, FailureLog
from . import metrics
from .accounts.base import KeyKind
from .interfaces import AccountExists, AccountStore, BackendUnavailable, Registry, Throttle
from .session import (
    Authenticate,
    Bind,
    CertLogin,
    Effect,
    Enrol,
    Leave,
    PeerCertificate,
    Register,
    Result,
    Session,
    SessionConfig,
    State,
    err,
)
from .sockets import listening_socket

CLOSED = State.CLOSED

log = logging.getLogger("eurechat.directory.server")
trace_log = logging.getLogger("eurechat.directory.trace")

__all__ = ["ServerConfig", "Services", "OutageLog", "DirectoryServer", "probe_tcp"]

FULL = err("max number of clients reached")
_PEM = serialization.Encoding.PEM


def peer_certificate(transport: asyncio.BaseTransport) -> Optional[PeerCertificate]:
    """The verified client certificate of a TLS transport, if it sent one.

    The handshake has already checked it chains to the directory CA (the
    server context requires that of any certificate offered); here only its
    user and key are read."""
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
        return PeerCertificate(enrolment.user_of(cert), fingerprint(cert.public_key()))
    except ValueError:
        return None


@dataclass
class ServerConfig:
    """Everything a worker needs besides its backends."""

    session: SessionConfig = field(default_factory=SessionConfig)
    max_connections: int = 10000
    auth_timeout: float = 30.0
    frame_timeout: float = 60.0
    bind_timeout: float = 2.0
    high_water: int = 64 * 1024
    trace: bool = False
    # The transports of the port (SPEC §5.1): who may use plaintext, and the
    # TLS context (None: TLS connections are refused as failed handshakes).
    plaintext: Plaintext = Plaintext.LOOPBACK
    ssl_context: Optional[ssl.SSLContext] = None
    handshake_timeout: float = 10.0
    # A closing connection whose client does not read what is left to send
    # (its final ERR behind replies it never read) is aborted after this long:
    # otherwise close() would wait for ever and the connection would outlive
    # every timeout, holding a slot of --max-connections.
    close_linger: float = 10.0


async def probe_tcp(address: str, port: int, timeout: float, tls: bool = False,
                    name: str = "", fingerprint_: str = "") -> Optional[str]:
    """Connect to ``address:port`` within ``timeout``; None if it worked, else
    why not.  With ``tls``, complete a TLS handshake presenting the
    directory's certificate; with ``fingerprint_`` too, the listener must
    prove it holds ``name``'s enrolled key (``listener_problem``)."""
    verify = tls and bool(fingerprint_)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(
            address, port, ssl=probe_context(verify) if tls else None,
            server_hostname="" if tls else None), timeout)
    except asyncio.TimeoutError:
        return f"no {'TLS' if tls else 'TCP'} connection within {timeout:g} s"
    except OSError as exc:  # (ssl.SSLError included)
        why = getattr(exc, "reason", None) or exc.strerror or str(exc) or type(exc).__name__
        if tls and not isinstance(exc, ConnectionRefusedError):
            return f"TLS handshake failed: {why}"
        return why
    try:
        if verify:
            return listener_problem(writer.get_extra_info("ssl_object"), name, fingerprint_)
        return None
    finally:
        writer.close()


class OutageLog:
    """The log of one kind of request failing because a backend is down, as
    one worker sees it: a WARNING when the first one fails, then at most one
    WARNING per ``interval`` with the number of failures since the previous
    line, and an INFO with the total once such a request works again.

    Why: during an outage (the Manager being replaced, Redis or PostgreSQL
    down) every peer retries, and one line per failed request was thousands
    of lines per second -- a flood that buries everything else and costs the
    disk.  The counts keep what those lines said.

    A backend can also *flap*: fail every other request (PostgreSQL timing
    out under load, pooled connections that are stale after a restart).  A
    line per change of state would be the same flood, so lines are also
    rationed: a burst of ``BURST`` (the first WARNING and the recovery of a
    short outage, at once), then one per ``interval``.  A line that is not
    due yet waits: the failures (and the times it worked in between) are
    counted into the same outage, and a timer writes the line when it is due
    -- so a recovery line always comes, even if no request follows.  A
    summary while the outage lasts is written when a failure arrives after
    the interval (a quiet outage has nothing new to say).  ``clock`` is a
    parameter so the rate is testable without waiting (``flush`` is then
    what the timer does)."""

    BURST = 2.0

    def __init__(self, what: str, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what              # e.g. "BIND/LEAVE", names the requests
        self.interval = interval
        self.clock = clock
        self.since: Optional[float] = None   # outage start; None: working
        self.up_since: Optional[float] = None  # worked again at (recovery not logged yet)
        self.total = 0                # failures in this outage
        self.unlogged = 0             # failures since the last line
        self.flaps = 0                # times it worked and then failed again, this outage
        self.reported = False         # this outage has had a line
        self.last = ("", "")          # the last failure: request, error
        self.logged_at = -float("inf")
        self.budget = self.BURST      # lines that may be written now
        self.budget_at = clock()
        self._timer: Optional[asyncio.TimerHandle] = None

    @property
    def down(self) -> bool:
        """Failing, as far as the log knows (a recovery whose line is still
        to come counts as working)."""
        return self.since is not None and self.up_since is None

    def failure(self, request: str, exc: BaseException) -> None:
        now = self.clock()
        self.last = (request, exc)
        if self.since is None:
            metrics.outage_began(self.what)
            self.since, self.reported = now, False
            self.total = self.unlogged = self.flaps = 0
        elif self.up_since is not None:  # it worked for a while: the same outage goes on
            self.up_since = None
            self.flaps += 1
        self.total += 1
        self.unlogged += 1
        if not self.reported or now - self.logged_at >= self.interval:
            self._write(now)

    def success(self) -> None:
        if self.since is None or self.up_since is not None:
            return
        now = self.clock()
        self.up_since = now
        self._write(now)

    def flush(self, force: bool = False) -> None:
        """Write the line that is waiting, if it is due (``force``: now,
        e.g. when the worker stops)."""
        self._cancel_timer()
        self._write(self.clock(), force)

    # -- internals ---------------------------------------------------------
    def _write(self, now: float, force: bool = False) -> None:
        if self.since is None or (self.reported and not self.unlogged
                                  and self.up_since is None):
            return  # nothing new to say
        if self.up_since is not None or not self.reported:
            # A change of state (down, up again): rationed.  (A summary is
            # due only ``interval`` after the previous line anyway.)
            self.budget = min(self.BURST,
                              self.budget + (now - self.budget_at) / self.interval)
            self.budget_at = now
            if self.budget < 0.999 and not force:  # (a timer may fire a hair early)
                self._schedule((1.0 - self.budget) * self.interval)
                return
            self.budget = max(self.budget - 1.0, 0.0)
        self._cancel_timer()
        request, exc = self.last
        flaps = f"; it worked again {self.flaps} times in between" if self.flaps else ""
        if self.up_since is not None:
            metrics.outage_ended(self.what, self.up_since - self.since)
            log.info("%s: backend available again after %.1f s; %d failures during the "
                     "outage (%d since the last message)%s", self.what,
                     self.up_since - self.since, self.total, self.unlogged, flaps)
            self.since = self.up_since = None
            self.total = self.unlogged = self.flaps = 0
        elif not self.reported:
            more = (f" ({self.unlogged} failures so far{flaps})" if self.unlogged > 1 else "")
            log.warning("%s: backend unavailable: %s%s (more %s failures are counted and "
                        "logged at most every %g s until it works again)", request, exc,
                        more, self.what, self.interval)
        else:
            log.warning("%s: backend still unavailable: %d failures since the last message "
                        "(%d since the outage began %.0f s ago%s); last: %s: %s", self.what,
                        self.unlogged, self.total, now - self.since, flaps, request, exc)
        self.reported = True
        self.unlogged = 0
        self.logged_at = now

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a test with its own clock): ``flush`` does it
        self._timer = loop.call_later(delay, self._due)

    def _due(self) -> None:
        self._timer = None
        self._write(self.clock())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Services:
    """Carries out a session's effects against the backends."""

    def __init__(self, registry: Registry, accounts: AccountStore, throttle: Throttle,
                 bind_timeout: float = 2.0, outage_log_interval: float = 10.0,
                 identity: Optional[DirectoryIdentity] = None) -> None:
        self.registry = registry
        self.accounts = accounts
        self.throttle = throttle
        self.bind_timeout = bind_timeout
        # The CA that certifies users' keys (None: no TLS identity, no CERT).
        self.identity = identity
        # One outage log per kind of request (they need different backends:
        # logins work while the presence registry is down, and must not end
        # its outage in the log).
        presence = OutageLog("BIND/LEAVE", outage_log_interval)
        self.outages: Dict[type, OutageLog] = {
            Bind: presence, Leave: presence,
            Authenticate: OutageLog("login", outage_log_interval),
            Register: OutageLog("REGISTER", outage_log_interval)}
        self.outages[CertLogin] = self.outages[Authenticate]
        self.outages[Enrol] = OutageLog("CERT", outage_log_interval)

    def flush_outage_logs(self) -> None:
        """At shutdown: write the outage lines still waiting for their turn
        (the counts of an outage would be lost otherwise)."""
        for outage in set(self.outages.values()):
            outage.flush(force=True)

    async def perform(self, effect: Effect, source: str) -> Result:
        """The one place where backend outages become ``Result.UNAVAILABLE``
        (and are logged, rate-limited: ``OutageLog``).

        An ``Enrol`` gives ``(result, detail)``: its reply carries what was
        decided (the certificate chain, or why not)."""
        try:
            result = await self._perform(effect, source)
        except BackendUnavailable as exc:
            self.outages[type(effect)].failure(f"{type(effect).__name__} for {source}", exc)
            return Result.UNAVAILABLE
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s for %s failed", type(effect).__name__, source)
            return Result.UNAVAILABLE
        # Evidence that the backend works: the request reached it (a BIND whose
        # probe failed, or a throttled login, did not).
        outage = self.outages[type(effect)]
        verdict = result[0] if isinstance(result, tuple) else result
        if outage.down and verdict is not Result.INVALID and verdict is not Result.THROTTLED:
            outage.success()
        return result

    async def _perform(self, effect: Effect, source: str) -> Result:
        cls = effect.__class__
        if cls is Authenticate:
            keys = (f"user:{effect.name}", f"addr:{source}")
            if await self.throttle.blocked(keys):
                log.info("login of %r from %s refused: throttled", effect.name, source)
                return Result.THROTTLED
            if await self.accounts.verify(effect.name, effect.password):
                log.info("%r logged in from %s", effect.name, source)
                return Result.OK
            await self.throttle.failure(keys)
            log.info("failed login of %r from %s", effect.name, source)
            return Result.FAILED
        if cls is Bind:
            reg = effect.registration
            if reg.tls:
                # A user with an enrolled key publishes only an endpoint that
                # proves it; the fingerprint goes with the registration (the
                # liveness probe checks it again, QUERY tells it).
                reg = reg._replace(fingerprint=await self.accounts.key(reg.name) or "")
            why = await probe_tcp(reg.address, reg.port, self.bind_timeout, reg.tls,
                                  reg.name, reg.fingerprint)
            if why is not None:
                log.info("BIND %s:%s of %r refused: %s", reg.address, reg.port, reg.name, why)
                return Result.INVALID
            await self.registry.bind(reg)
            log.info("%r bound to %s:%s", reg.name, reg.address, reg.port)
            return Result.OK
        if cls is Leave:
            await self.registry.remove(effect.name)
            log.info("%r left", effect.name)
            return Result.OK
        if cls is CertLogin:
            if await self.accounts.key(effect.name) == effect.fingerprint:
                log.info("%r logged in by certificate from %s", effect.name, source)
                metrics.login("certificate")
                return Result.OK
            log.info("certificate of %r from %s is not of the enrolled key: password needed",
                     effect.name, source)
            return Result.FAILED
        if cls is Enrol:
            return await self._enrol(effect, source)
        if cls is Register:
            try:
                await self.accounts.create(effect.name, effect.password)
            except AccountExists:
                log.info("REGISTER of %r from %s refused: the name is taken", effect.name,
                         source)
                return Result.EXISTS
            log.info("account %r created from %s", effect.name, source)
            return Result.OK
        raise TypeError(f"unknown effect {effect!r}")

    async def _enrol(self, effect: Enrol, source: str) -> tuple:
        """``CERT``: decide what the request may change (``enrolment.decide``),
        record a change of key as a compare-and-set on the enrolled key (a
        concurrent change makes us decide again against the winner), then
        certify the key."""
        identity = self.identity
        if identity is None or identity.ca_key is None:
            return Result.INVALID, b"this directory does not issue certificates"
        try:
            request = enrolment.load_request(effect.request)
        except enrolment.RequestRefused as exc:
            return Result.INVALID, str(exc).encode()
        for _ in range(3):
            enrolled = await self.accounts.key(effect.name)
            try:
                change = enrolment.decide(
                    effect.name, enrolled, request.fingerprint, session_key=effect.session_key,
                    by_password=effect.by_password, reset=effect.reset)
            except enrolment.RequestRefused as exc:
                log.info("CERT of %r from %s refused: %s", effect.name, source, exc)
                return Result.INVALID, str(exc).encode()
            if change is enrolment.Change.RENEW:
                break
            if await self.accounts.change_key(effect.name, enrolled, request.fingerprint,
                                              KeyKind(change.value)):
                log.info("key of %r: %s %s from %s", effect.name, change.value,
                         request.fingerprint, source)
                break
        else:
            return Result.INVALID, b"the key changed meanwhile, retry"
        cert = enrolment.issue_user_certificate(
            effect.name, request.public_key, identity.ca_cert, identity.ca_key)
        return Result.OK, cert.public_bytes(_PEM) + identity.ca_pem


class DirectoryProtocol(asyncio.Protocol):
    """One client connection (over TLS when ``tls``; ``deadline``: the end of
    its window before authentication, which started when it was accepted)."""

    __slots__ = ("server", "transport", "session", "task", "write_paused",
                 "read_paused", "frame_since", "tls", "deadline")

    def __init__(self, server: DirectoryServer, tls: bool = False,
                 deadline: float = 0.0) -> None:
        self.server = server
        self.tls = tls
        self.deadline = deadline or time.monotonic() + server.config.auth_timeout
        self.transport: Optional[asyncio.Transport] = None
        self.session: Optional[Session] = None
        self.task: Optional[asyncio.Future] = None
        self.write_paused = False
        self.read_paused = False
        self.frame_since = 0.0

    # -- asyncio callbacks -------------------------------------------------
    def connection_made(self, transport) -> None:  # type: ignore[override]
        server = self.server
        self.transport = transport
        peername = transport.get_extra_info("peername")
        # (--max-connections was applied when the socket was accepted: Acceptor.admit.)
        # SO_KEEPALIVE is inherited from the listening socket (listening_socket).
        transport.set_write_buffer_limits(high=server.config.high_water)
        self.session = metrics.SessionType(server.config.session, server.query,
                               peername[0] if peername else "",
                               self._trace_in if server.config.trace else None)
        server.connections.add(self)
        if self.tls:
            metrics.tls_handshake(True)
            metrics.transport(self.session, "tls")
            self.session.tls = True
            self.session.peer_cert = peer_certificate(transport)
        server.unauthenticated[self] = self.deadline
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: %s session", self.peer, "TLS" if self.tls else "plaintext")

    @property
    def peer(self) -> str:
        """``host:port`` of the client, for logs (computed: not stored per session)."""
        name = self.transport.get_extra_info("peername") if self.transport else None
        return f"{name[0]}:{name[1]}" if name else "?"

    def _trace_in(self, direction: str, data: bytes) -> None:
        trace_log.info("%s%s > %r", self.peer, " TLS" if self.tls else "", data)

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is None or session.state is CLOSED:
            return
        session.receive(data)
        try:
            self.pump()
        except Exception:  # a bug must cost one session, never the worker
            self._internal_error()
            return
        self.track_frame()

    def track_frame(self) -> None:
        """Start or stop the frame timer from the session's settled state (after
        the queue was worked on: a large read is decoded slice by slice)."""
        if self.session.in_frame:
            if not self.frame_since:
                self.frame_since = time.monotonic()
                self.server.in_frame.add(self)
        elif self.frame_since:
            self.frame_since = 0.0
            self.server.in_frame.discard(self)

    def _internal_error(self) -> None:
        log.exception("internal error on session from %s; closing it", self.peer)
        if self.session is not None:
            self.session.state = CLOSED
        self.transport.abort()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Optional[Exception]) -> None:
        server = self.server
        server.connections.discard(self)
        server.unauthenticated.pop(self, None)
        server.in_frame.discard(self)
        server.closing.pop(self, None)
        metrics.session_closed(self.session)
        if self.session is not None:
            self.session.state = CLOSED
        if self.task is not None and self.task.done() is False \
                and isinstance(self.session and self.session.waiting, Authenticate):
            self.task.cancel()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("connection from %s closed", self.peer)

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._update_reading()
        try:
            self.pump()
        except Exception:
            self._internal_error()
            return
        if self.session is not None:
            self.track_frame()

    # -- driving the session ----------------------------------------------
    def _update_reading(self) -> None:
        want_pause = self.write_paused or self.task is not None
        if want_pause != self.read_paused and self.transport is not None \
                and not self.transport.is_closing():
            self.read_paused = want_pause
            if want_pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def pump(self) -> None:
        """Answer queued requests while the transport accepts output."""
        session = self.session
        budget = self.server.config.high_water
        while self.task is None and not self.write_paused:
            data, close, effect = session.run(budget)
            if not self.apply(data, close, effect) or not session.has_input or not data:
                return

    def apply(self, data: bytes, close: bool, effect) -> bool:
        """Carry out one step's output; False once nothing more should be done now."""
        transport = self.transport
        if data:
            if self.server.config.trace:
                trace_log.info("%s%s < %r", self.peer, " TLS" if self.tls else "", data)
            transport.write(data)
        if close:
            self.close_transport()
            return False
        if effect is not None:
            self.task = asyncio.ensure_future(self._effect(effect))
            self._update_reading()
            return False
        return True

    async def _effect(self, effect: Effect) -> None:
        result = await self.server.services.perform(effect, self.session.source)
        detail = b""
        if isinstance(result, tuple):
            result, detail = result
        metrics.effect_done(effect, result)
        self.task = None
        session = self.session
        if session.closed or self.transport.is_closing():
            return
        try:
            out = session.resume(result, self.server.config.high_water, detail)
            if session.state is State.READY:
                self.server.unauthenticated.pop(self, None)
            if self.apply(out.data, out.close, out.effect):
                self.pump()
            self._update_reading()
            self.track_frame()
        except Exception:
            self._internal_error()

    def close_transport(self) -> None:
        """Close after the pending output is sent, but not for longer than
        ``close_linger`` (the sweeper aborts a connection that lingers)."""
        transport = self.transport
        if transport.is_closing():
            return
        transport.close()
        if transport.get_write_buffer_size():
            self.server.closing[self] = time.monotonic() + self.server.config.close_linger

    def timed_out(self, what: str) -> None:
        out = self.session.timeout(what)
        log.info("closing %s: %s timeout", self.peer, what)
        transport = self.transport
        if transport.get_write_buffer_size():
            # The client does not read what it was sent: an ERR queued behind
            # that would never arrive, and close() would wait for ever.
            transport.abort()
            return
        if out.data and not transport.is_closing():
            transport.write(out.data)
        self.close_transport()


class _HandshakeLog(FailureLog):
    """Failed handshakes: logged rationed, and counted in the metrics."""

    def failure(self, source: str, why: str) -> None:
        metrics.tls_handshake(False)
        super().failure(source, why)


class DirectoryServer:
    """The listening side of one worker: connections, timers, shutdown."""

    def __init__(self, config: ServerConfig, services: Services) -> None:
        self.config = config
        self.services = services
        self.query = services.registry.query
        self.connections: Set[DirectoryProtocol] = set()
        self.unauthenticated: Dict[DirectoryProtocol, float] = {}
        self.in_frame: Set[DirectoryProtocol] = set()
        self.closing: Dict[DirectoryProtocol, float] = {}  # -> abort deadline
        self._sweeper: Optional[asyncio.Task] = None
        self._refused = 0
        self._refused_logged = 0.0
        self.acceptor: Optional[Acceptor] = None
        self.handshake_failures = _HandshakeLog("TLS handshake failed")

    def admit(self, address: tuple) -> Optional[bytes]:
        """The connection limit, applied before anything is committed to a new
        connection (connections still being classified or handshaking count)."""
        peer = f"{address[0]}:{address[1]}" if len(address) >= 2 else "?"
        pending = self.acceptor.pending if self.acceptor is not None else 0
        if len(self.connections) + pending >= self.config.max_connections:
            self.refused(peer)
            return FULL
        if log.isEnabledFor(logging.DEBUG):
            log.debug("connection from %s", peer)
        return None

    def refused(self, peer: str) -> None:
        """Log refusals past --max-connections at most once a second (with a
        count): a client hammering a full server must not flood the log."""
        self._refused += 1
        metrics.refused()
        now = time.monotonic()
        if now - self._refused_logged >= 1.0:
            log.warning("refusing %s: max number of clients reached (%d); %d refused "
                        "since the last such message", peer, self.config.max_connections,
                        self._refused)
            self._refused = 0
            self._refused_logged = now

    async def start(self, host: str = "127.0.0.1", port: int = 0,
                    sock: Optional[socket.socket] = None) -> tuple:
        if sock is None:
            sock = listening_socket(host, port)
        cfg = self.config
        self.acceptor = Acceptor(
            sock, lambda tls, deadline: DirectoryProtocol(self, tls, deadline),
            cfg.ssl_context, cfg.plaintext, window=cfg.auth_timeout,
            handshake_timeout=cfg.handshake_timeout, admit=self.admit,
            silent=err("authentication timeout, closing"),
            failures=self.handshake_failures)
        self.acceptor.start()
        self._sweeper = asyncio.ensure_future(self._sweep())
        return sock.getsockname()[:2]

    def set_tls(self, identity: DirectoryIdentity, context: ssl.SSLContext) -> None:
        """Serve new TLS connections with ``context`` (a renewed server
        certificate); sessions already open keep theirs."""
        self.config.ssl_context = context
        self.config.session.ca_pem = identity.ca_pem
        self.services.identity = identity
        if self.acceptor is not None:
            self.acceptor.context = context

    async def _sweep(self) -> None:
        """Enforce the pre-auth and frame timeouts with one timer per worker
        instead of one per connection."""
        cfg = self.config
        tick = max(0.05, min(1.0, cfg.auth_timeout / 4, cfg.frame_timeout / 4))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            # Not in deadline order: a window starts at accept, an entry is
            # made once the first byte (and the handshake) are through.
            expired = [proto for proto, deadline in self.unauthenticated.items()
                       if deadline <= now]
            for proto in expired:
                del self.unauthenticated[proto]
                proto.timed_out("auth")
            if self.closing:
                lingering = [p for p, deadline in self.closing.items() if deadline <= now]
                for proto in lingering:
                    del self.closing[proto]
                    log.info("aborting %s: its client did not read the rest of its "
                             "replies within %g s of closing", proto.peer, cfg.close_linger)
                    proto.transport.abort()
            if self.in_frame:
                limit = now - cfg.frame_timeout
                for proto in [p for p in self.in_frame
                              if p.frame_since and p.frame_since < limit and not p.read_paused]:
                    self.in_frame.discard(proto)
                    if proto.session.in_frame:
                        proto.timed_out("frame")
                    else:  # finished since (answered from held input): no timeout
                        proto.frame_since = 0.0

    async def close(self, timeout: float = 2.0) -> None:
        """Stop accepting, close every session, wait briefly for them to go."""
        if self.acceptor is not None:
            self.acceptor.close()
            self.acceptor.sock.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for proto in list(self.connections):
            if proto.transport is not None:
                proto.transport.close()
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for proto in list(self.connections):
            proto.transport.abort()
        self.services.flush_outage_logs()
