"""``Peer``: the peer's public API, and the wiring of its parts.

The parts, each owning one thing (the rules have no I/O and are tested on
their own; the edges run them on the event loop):

- rules: ``outbox`` (one recipient's window, ACK matching, resends, message
  ids), ``dialing`` (backoff, which address is worth a dial), ``pairing``
  (which of two connections a pair keeps), ``liveness`` (when to probe a
  silent connection, when to give it up), ``addresses`` (the lookup cache,
  sightings), ``commit`` (the group commit and what follows it),
  ``protocol`` (the wire codec of one link), ``settings``, ``events``;
- edges: ``connection`` (one connection's ``asyncio.Protocol``),
  ``connections`` (the table of connections, its sweep, the listener),
  ``route`` (the driver of one recipient's route, the dialler);
- here: ``Peer`` (what programs call) and ``_Wiring`` (what the edges may
  ask of the peer: their ``typing.Protocol`` interfaces, nothing more).

How a message travels (SPEC section 4):

1. ``send()`` appends it to the pending batch.  At the next turn of the
   event loop one SQLite transaction commits everything pending (group
   commit); only then is the message ``queued`` (one event per recipient) and
   handed to each recipient's ``Route``.
2. A route keeps its recipient's unacknowledged messages in ``seq`` order and
   sends them pipelined, up to ``window`` unacknowledged at a time, over the
   one connection the pair shares.  When it has no connection it looks the
   recipient up (QUERY, briefly cached) and dials; failures back off
   exponentially (capped at ``retry_max``) and are cut short as soon as the
   recipient is seen again (in a QUERY result or on an incoming connection).
3. The receiver commits (sender, msgid) and the text to its inbox, then sends
   ``ACK 0 <msgid>``, then shows the message and advances its display cursor.
   A duplicate is ACKed again, not shown.
4. The sender deletes the outbox row on the ACK (again group-committed) and
   reports ``delivered`` after that commit.

Ordering: on one connection messages are sent in ``seq`` order, and after a
reconnect every unacknowledged message is sent again, oldest first, before
anything newer; the receiver records in arrival order and drops duplicates,
so it records (and shows) each recipient's messages in the order the sender
accepted them.

One connection per pair: either side dials when it has something to send
and no connection; an incoming connection is identified by the sender of its
first MESSAGE and then also used for sending back, once the directory
confirms that the claimed sender is registered at the connection's source
IP.  Of two connections for one pair, the pair rule (``pairing``) says which
one stays; anything unacknowledged on the other is sent again.

Dead connections: one that owes us ACKs and has gone silent is probed with a
PING and closed if that goes unanswered too (``liveness``, run by the sweep),
so a half-open connection costs seconds, not the idle timeout.

The engine logs on ``eurechat.peer.node`` (``settings.LOG_NAME``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import ssl
import time
from functools import partial
from typing import (
    AsyncIterator,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

from cryptography import x509

from ..backoff import jittered_delay
from ..registration import Registration
from ..tls.enrolment import user_of
from ..tls.fingerprint import fingerprint
from ..tls.policy import Plaintext
from ..tls.trust import DirectoryTrust, KnownDirectories, read_ca_file
from . import commit
from . import events as ev_
from .addresses import AddressBook, Sightings
from .connection import Connection
from .connections import Connections, listen
from .credentials import Credentials, cert_path
from .directory_client import (
    DirectoryClient,
    DirectoryError,
    DirectoryUnavailable,
    PasswordSource,
)
from .events import Event, IncomingMessage
from .identity import IdentityError, listener_context, load_identity_key
from .listener import Listener
from .outbox import OutItem, new_msgid
from .pins import Pins
from .protocol import (
    AckReceived,
    ErrReceived,
    MessageReceived,
    PingReceived,
    PongReceived,
    Violation,
    encode_message,
    encode_ping,
    encode_pong,
    valid_name,
)
from .protocol import (
    Event as ProtocolEvent,
)
from .route import Route
from .safety import format_safety_number, safety_number
from .settings import LOG_NAME, MAX_TEXT_BYTES, Timings
from .store import INBOX_RETENTION, PeerStore, default_data_dir
from .transport import dial_context

log = logging.getLogger(LOG_NAME)


class PeerError(Exception):
    """A request of the API could not be served (bad recipient, no directory...)."""


def _plain_ip(ip: str) -> str:
    """``::ffff:1.2.3.4`` (IPv4 seen through an IPv6 socket) -> ``1.2.3.4``."""
    return ip[7:] if ip.startswith("::ffff:") else ip


class Peer:
    """A eurechat peer for programs: the same engine ``python -m eurechat.peer`` runs.

    Use it as an async context manager::

        async with Peer("alice", "secret-pw", directory=("127.0.0.1", 8888)) as peer:
            msgid = await peer.send(["bob"], "hello")
            async for msg in peer.messages():
                print(msg.sender, msg.text)

    ``directory=None`` runs without a directory: recipients are then looked
    up in ``addresses`` (``{"bob": ("127.0.0.1", 5555)}``), which is handy
    for tests and for fixed deployments.

    The directory is spoken to over TLS and trusted (SPEC section 5.2) by
    ``directory_ca`` (its CA certificate: a path, or the PEM as bytes), else
    ``directory_fingerprint`` (``sha256:...``), else on first use
    (``<data_dir>/known_directories``).  ``plaintext`` (``off``,
    ``loopback``, ``on``) says where a directory without TLS may be spoken to
    in clear.  ``on_notice`` gets the lines a person should see once (a
    directory trusted on first use, a fallback to plaintext); by default
    they are logged.

    Keys (SPEC section 5.3): after each login over TLS the identity key is
    certified and the chain kept in ``<data_dir>/<user>.crt``; while it is
    valid the peer logs in by it, so ``password`` may be empty (``""`` or
    None), or a callable asked only when a login needs the password.  With
    neither a password nor a valid certificate, ``start()`` raises
    ``PasswordNeeded``.  ``reset_key`` enrols this peer's key in place of a
    lost one (authorised by the password); ``rotate_key`` replaces the key
    by a new one, authorised by the valid certificate of the old one.
    """

    def __init__(self, user: str, password: Union[str, PasswordSource, None] = "", *,
                 directory: Optional[Tuple[str, int]] = None,
                 listen: Tuple[str, int] = ("127.0.0.1", 0),
                 data_dir: Union[str, os.PathLike, None] = None,
                 register: bool = False,
                 addresses: Optional[Dict[str, Tuple[str, int]]] = None,
                 timings: Optional[Timings] = None,
                 on_message: Optional[Callable[[IncomingMessage], None]] = None,
                 on_messages: Optional[Callable[[List[IncomingMessage]], None]] = None,
                 on_event: Optional[Callable[[Event], None]] = None,
                 inbox_retention: Optional[float] = INBOX_RETENTION,
                 directory_ca: Union[str, os.PathLike, bytes, None] = None,
                 directory_fingerprint: Optional[str] = None,
                 plaintext: Union[str, Plaintext] = Plaintext.LOOPBACK,
                 on_notice: Optional[Callable[[str], None]] = None,
                 reset_key: bool = False, rotate_key: bool = False,
                 strict_keys: bool = False) -> None:
        if not valid_name(user):
            raise ValueError(f"invalid user name {user!r}: 1-32 of [A-Za-z0-9_.-], "
                             "not starting with '.' or '-'")
        self.user = user
        self._password = password
        self.reset_key, self.rotate_key = reset_key, rotate_key
        self.directory_address = directory
        self.listen_address = listen
        self.data_dir = data_dir if data_dir is not None else default_data_dir()
        self.plaintext = Plaintext.parse(plaintext)
        #: whom the directory client believes (raises TrustError for a bad CA file)
        self.trust = DirectoryTrust(
            ca_pem=(directory_ca if isinstance(directory_ca, bytes) or directory_ca is None
                    else read_ca_file(directory_ca)),
            fingerprint=directory_fingerprint, known=KnownDirectories(self.data_dir))
        self._on_notice = on_notice
        #: hold messages to a name whose key changed until ``trust`` (SPEC §5.4)
        self.strict_keys = strict_keys
        #: the key first seen for each name (``<data-dir>/known_peers``)
        self.pins: Optional[Pins] = None
        self.register = register
        self.addresses: Dict[str, Tuple[str, int]] = dict(addresses or {})
        self.timings = timings or Timings.from_env()
        #: seconds a received message's dedupe record is kept (None/0: for ever)
        self.inbox_retention = inbox_retention or None
        self._on_message = on_message
        self._on_messages = on_messages
        self._listeners: List[Callable[[Event], None]] = []
        if on_event is not None:
            self._listeners.append(on_event)
        self.store: Optional[PeerStore] = None
        self.directory: Optional[DirectoryClient] = None
        self.address: Optional[Tuple[str, int]] = None
        self._server: Optional[Listener] = None
        self._routes: Dict[str, Route] = {}
        self._wiring = _Wiring(self)
        self._connections = Connections(self._wiring, self.timings)
        self._backoff = partial(jittered_delay, base=self.timings.retry_base,
                                cap=self.timings.retry_max)
        #: the lookup cache, behind the fixed ``addresses``
        self._book = AddressBook(self.addresses, self.timings.query_ttl)
        #: what the next group commit writes
        self._pending = commit.Pending()
        #: when each name was last seen online (loaded from the store at start)
        self._sightings = Sightings()
        #: this user's certified identity (SPEC §5.3), None without one: what
        #: the listener presents (``_listener_context``)
        self.credentials: Optional[Credentials] = None
        #: (mtime, size) of ``<user>.crt`` when the listener's context was made
        self._cert_stamp: Optional[Tuple[int, int]] = None
        #: (credentials, their client context) for dialling peers over TLS
        self._client_ctx: Optional[Tuple[Credentials, ssl.SSLContext]] = None
        #: (credentials, a context presenting them, checking nobody)
        self._presenting_ctx: Optional[Tuple[Credentials, ssl.SSLContext]] = None
        #: each name's key fingerprint as the directory last listed it
        #: ("": no enrolled key, a seed peer)
        self._fingerprints: Dict[str, str] = {}
        #: the changed key last said (``keychange``) for each name
        self._keychanges: Dict[str, str] = {}
        #: the last reason said for each name no link is made to
        self._refusals: Dict[str, str] = {}
        self._to_pump: Set[Route] = set()
        self._flush_handle: Optional[asyncio.Handle] = None
        self._pings: Dict[str, asyncio.Future] = {}
        self._inbox_q: Optional[asyncio.Queue] = None
        self._event_qs: List[asyncio.Queue] = []
        self._shown_backlog: List[IncomingMessage] = []
        self._idle_waiters: List[asyncio.Future] = []
        self._ready = False
        self._closing = False
        self._store_closed = False
        self._sweeper: Optional[asyncio.Task] = None
        self._pruner: Optional[asyncio.Task] = None
        self._tasks: Set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    # -- life cycle ---------------------------------------------------------
    async def __aenter__(self) -> Peer:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the store, listen, log in to the directory, then report ``ready``.

        Raises ``AuthFailed``/``NameTaken`` (from ``directory_client``) when
        the directory refuses us, ``StoreLocked`` when this user already runs
        here, ``OSError`` when the listen address is unavailable.  A directory
        that is down is *not* an error: the peer runs and keeps retrying it.
        """
        self._loop = asyncio.get_running_loop()
        self.store = PeerStore(self.data_dir, self.user)
        try:
            self.pins = Pins(self.data_dir, self.user)
            for row in self.store.load_outbox():
                self._route(row.recipient).enqueue(OutItem(
                    row.seq, row.msgid, encode_message(self.user, row.msgid, row.text),
                    row.created))
            self._sightings = Sightings(self.store.load_seen())
            host, port = self.listen_address
            self._server = await listen(
                self._connections, host, port, self._listener_context(), self.plaintext)
            sockname = self._server.sockets[0].getsockname()
            self.address = (host or sockname[0], sockname[1])
            self._sweeper = asyncio.ensure_future(self._connections.sweep())
            if self.inbox_retention:
                # At start-up: one bounded pass, before anything arrives.
                self._pruner = asyncio.ensure_future(self._prune_loop(self.prune_inbox()))
            if self.directory_address is not None:
                self.directory = DirectoryClient(
                    self.directory_address[0], self.directory_address[1], self.user,
                    self._password, listen=lambda: self.address, register=self.register,
                    retry_base=self.timings.directory_retry_base,
                    retry_max=self.timings.directory_retry_max,
                    wait_online=self.timings.directory_wait,
                    on_online=self._on_directory_online,
                    on_error=lambda text: self._emit(ev_.error(text)),
                    recheck=self.timings.rebind_check,
                    trust=self.trust, plaintext=self.plaintext, on_notice=self._on_notice,
                    exclusive=True, data_dir=self.data_dir, reset_key=self.reset_key,
                    rotate_key=self.rotate_key, on_credentials=self._on_credentials)
                await self.directory.start()
        except BaseException:
            await self._shutdown(leave=False)
            raise
        self._ready = True
        self._emit(ev_.ready(self.user, self.address))
        self._show_all([IncomingMessage(row.sender, row.msgid, row.text, row.seq)
                        for row in self.store.unshown()])
        for route in list(self._routes.values()):
            route.pump()

    def _listener_context(self) -> ssl.SSLContext:
        """What the listener presents: the directory's certificate for this
        user while it is valid (the directory's BIND check and other peers
        require it), else a self-signed certificate of the identity key."""
        self._cert_stamp = self._stamp()
        try:
            creds = Credentials.load(self.data_dir, self.user)
        except IdentityError as exc:
            log.warning("%s", exc)
            creds = None
        if creds is not None and creds.valid():
            try:
                context = creds.server_context(require=True)
            except ssl.SSLError as exc:   # the key file changed under the certificate
                log.info("cannot present %s: %s", creds.cert_file, exc)
            else:
                self.credentials = creds
                log.info("the listener presents %s (valid until %s)", creds.cert_file,
                         creds.valid_until)
                return context
        self.credentials = None
        return listener_context(load_identity_key(self.data_dir), self.data_dir)

    def _stamp(self) -> Optional[Tuple[int, int]]:
        try:
            st = os.stat(cert_path(self.data_dir, self.user))
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _refresh_listener(self, force: bool = False) -> None:
        """Present the current certificate from the next connection on: after
        an enrolment or renewal (``force``), or when ``<user>.crt`` changed
        or the one presented is near its end (checked by the sweep)."""
        server = self._server
        if server is None or self._closing:
            return
        creds = self.credentials
        if not force and self._stamp() == self._cert_stamp and \
                (creds is None or creds.valid()):
            return
        server.acceptor.context = self._listener_context()

    def _on_credentials(self, creds: Credentials) -> None:
        """A new certificate (enrolment, renewal, reset, rotation) is kept:
        the listener presents it at once (the BIND that follows is checked
        against it)."""
        self.credentials = creds
        self._refresh_listener(force=True)

    async def close(self, leave: bool = False) -> None:
        """Stop; with ``leave`` deregister from the directory first.  The outbox
        persists: what is still queued is sent at the next start."""
        await self._shutdown(leave)

    def _check_live(self, conn: Connection, now: float) -> None:
        """Probe ``conn`` or give it up, as ``Liveness`` says (``Connections.check_live``)."""
        self._connections.check_live(conn, now)

    def prune_inbox(self) -> int:
        """One bounded pass (``timings.prune_batch`` rows at most) deleting the
        dedupe records of shown messages older than ``inbox_retention``;
        returns how many went.  Runs at start-up and every
        ``timings.prune_interval`` (sooner while a backlog remains)."""
        if not self.inbox_retention or self.store is None or self._store_closed:
            return 0
        try:
            n = self.store.prune_inbox(time.time() - self.inbox_retention,
                                       self.timings.prune_batch)
        except Exception:   # a failed prune costs disk space, never a message
            log.exception("pruning the inbox failed")
            return 0
        if n:
            log.info("pruned %d inbox record(s) older than %g s", n, self.inbox_retention)
        return n

    async def _prune_loop(self, last: int) -> None:
        """Prune now and then.  A full batch (``last``: what the previous pass
        deleted) means a backlog (an old inbox, a shorter retention than last
        time): the next pass comes soon, with the event loop free in between."""
        interval = self.timings.prune_interval
        batch = self.timings.prune_batch
        while True:
            await asyncio.sleep(min(0.05, interval) if last >= batch > 0 else interval)
            last = self.prune_inbox()

    async def _shutdown(self, leave: bool) -> None:
        if self._closing:
            return
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._pruner is not None:
            self._pruner.cancel()
        if self.directory is not None:
            await self.directory.close(leave=leave)
        if self._server is not None:
            self._server.close()
        for route in self._routes.values():
            route.stop()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        if self.store is not None:
            # Sightings kept only in memory (SEEN_SAVE_EVERY) go with the last commit.
            self._sightings.save_all()
            with contextlib.suppress(Exception):
                self._flush()
        self._connections.close_all()
        for fut in self._pings.values():
            if not fut.done():
                fut.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        if self._inbox_q is not None:
            self._inbox_q.put_nowait(None)
        for q in self._event_qs:
            q.put_nowait(None)
        if self.store is not None:
            self.store.close()
            self._store_closed = True

    # -- public API ---------------------------------------------------------
    def send_nowait(self, recipients: Union[str, Iterable[str]],
                    text: str) -> Tuple[str, asyncio.Future[str]]:
        """Queue ``text`` for ``recipients`` without waiting for the commit.

        Returns ``(msgid, future)``; the future resolves to the msgid once the
        message is durably in the outbox (then ``queued`` events follow).
        Messages queued this way keep their call order.
        """
        if self._closing or not self._ready:
            raise PeerError("the peer is not running")
        if isinstance(recipients, str):
            recipients = recipients.split(",")
        names: List[str] = []
        for name in recipients:
            if name not in self._routes:
                name = name.strip()
                if not valid_name(name):
                    raise PeerError(f"invalid recipient name {name!r}")
            if name == self.user:
                raise PeerError("you cannot send a message to yourself")
            if name not in names:
                names.append(name)
        if not names:
            raise PeerError("no recipient")
        size = len(text)
        if isinstance(text, str) and not text.isascii():
            # Encoded here, not only at the commit: a text that cannot be
            # encoded (a lone surrogate, e.g. from os.fsdecode) would fail
            # the whole group commit, every other message of the batch too.
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError as exc:
                raise PeerError(f"the text is not valid Unicode: {exc}") from None
        if size > MAX_TEXT_BYTES:
            raise PeerError(f"message too long (more than {MAX_TEXT_BYTES} bytes)")
        msgid = new_msgid()
        fut = self._loop.create_future()
        self._pending.out.append((msgid, text, names, fut))
        self._schedule_flush()
        return msgid, fut

    async def send(self, recipients: Union[str, Iterable[str]], text: str) -> str:
        """Queue ``text`` for each recipient; return the msgid once it is durably
        queued (it is delivered in the background; watch ``events()``)."""
        _, fut = self.send_nowait(recipients, text)
        return await fut

    def messages(self) -> AsyncIterator[IncomingMessage]:
        """Incoming messages, each once, in the order they were recorded.

        A message counts as shown when the consumer asks for the next one,
        so one that was being handled when the program died comes again at
        the next start.  Only one consumer (or ``on_message``) per peer.
        """
        if self._on_message is not None or self._on_messages is not None:
            raise PeerError("this peer delivers messages to on_message")
        if self._inbox_q is None:
            self._inbox_q = asyncio.Queue()
            for m in self._shown_backlog:
                self._inbox_q.put_nowait(m)
            self._shown_backlog = []
        return self._iter_messages(self._inbox_q)

    async def _iter_messages(self, q: asyncio.Queue) -> AsyncIterator[IncomingMessage]:
        while True:
            m = await q.get()
            if m is None:
                return
            yield m
            if self.store is not None and not self._closing:
                self.store.mark_shown(m.seq)

    def events(self) -> AsyncIterator[Event]:
        """Every event (``ready``, ``queued``, ``delivered``, ``message``,
        ``error``...) as the dicts ``--json`` prints, from now on."""
        q: asyncio.Queue = asyncio.Queue()
        self._event_qs.append(q)
        return self._iter_events(q)

    async def _iter_events(self, q: asyncio.Queue) -> AsyncIterator[Event]:
        try:
            while True:
                e = await q.get()
                if e is None:
                    return
                yield e
        finally:
            with contextlib.suppress(ValueError):
                self._event_qs.remove(q)

    def add_listener(self, callback: Callable[[Event], None]) -> None:
        """Call ``callback(event)`` synchronously for every event."""
        self._listeners.append(callback)

    async def who(self, name: Optional[str] = None) -> List[Registration]:
        """Who is online (QUERY), sorted by name."""
        if self.directory is None:
            regs = [Registration(n, a[0], a[1]) for n, a in sorted(self.addresses.items())
                    if name is None or n == name]
            return regs
        regs = await self.directory.query(name)
        self._note_registrations(regs, complete_for=name)
        return regs

    async def ping(self, name: str, timeout: Optional[float] = None) -> float:
        """Round trip to ``name`` over the pair's connection, in milliseconds."""
        if not valid_name(name):
            raise PeerError(f"invalid name {name!r}")
        route = self._route(name)
        conn = route.conn if route.conn is not None and not route.conn.closed else None
        if conn is None:
            await asyncio.shield(route.connect_now())
            conn = route.conn
            if conn is None or conn.closed:
                raise PeerError(f"cannot reach {name}")
        token = secrets.token_hex(8)
        fut = self._loop.create_future()
        self._pings[token] = fut
        t0 = time.perf_counter()
        conn.write(encode_ping(token), answer_due=True)
        try:
            await asyncio.wait_for(fut, timeout or self.timings.ping_timeout)
        except asyncio.TimeoutError:
            raise PeerError(f"no PONG from {name}") from None
        finally:
            self._pings.pop(token, None)
        return (time.perf_counter() - t0) * 1000.0

    def pending(self) -> List[dict]:
        """Messages not yet acknowledged, per recipient, oldest first.

        Messages accepted but not yet committed are committed first (their
        ``queued`` events come before this answer): the list is what is
        durably in the outbox, never a message that is not queued yet."""
        if self._pending.out and not self._closing and not self._store_closed:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush()
        out = []
        for route in self._routes.values():
            for item in route.outbox.unacked():
                out.append((item.seq, {"to": route.name, "id": item.msgid, "text": item.text}))
        for msgid, text, names, _fut in self._pending.out:   # only while closing
            for n in names:
                out.append((1 << 62, {"to": n, "id": msgid, "text": text}))
        out.sort(key=lambda x: x[0])
        return [d for _, d in out]

    def waiting(self) -> List[dict]:
        """Per recipient with messages not yet acknowledged, longest waiting
        first: ``{"to", "queued", "since", "waited", "last_seen", "connected"}``.

        ``since``: when the oldest of them was queued (``time.time()``, kept in
        the outbox, so it survives restarts); ``waited``: seconds since then;
        ``last_seen``: when this peer last saw the recipient online (in a
        directory answer, or acknowledging a message), ``None`` if never —
        the directory answers "not online" alike for a user who is away and
        a name that has no account (SPEC section 4 gives no way to tell), so
        a name never seen is the hint of a typo; ``connected``: a
        connection to it is open right now."""
        if self._pending.out and not self._closing and not self._store_closed:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush()
        now = time.time()
        out = []
        for route in self._routes.values():
            items = list(route.outbox.unacked())
            if not items:
                continue
            since = items[0].created
            out.append({"to": route.name, "queued": len(items), "since": round(since, 3),
                        "waited": round(max(0.0, now - since), 3),
                        "last_seen": self.last_seen(route.name),
                        "connected": route.connected})
        out.sort(key=lambda d: (d["since"], d["to"]))
        return out

    @property
    def unacked(self) -> int:
        return sum(len(r.outbox) for r in self._routes.values()) + len(self._pending.out)

    async def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Wait until nothing is queued (True) or ``timeout`` passes (False)."""
        deadline = None if timeout is None else self._loop.time() + timeout
        while self.unacked or self._pending.dels:
            if deadline is not None and self._loop.time() >= deadline:
                return False
            fut = self._loop.create_future()
            self._idle_waiters.append(fut)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(fut, None if deadline is None
                                       else max(0.0, deadline - self._loop.time()))
        return True

    # -- events out -----------------------------------------------------------
    def _emit(self, event: Event) -> None:
        for cb in self._listeners:
            try:
                cb(event)
            except Exception:  # a broken listener must not stop delivery
                log.exception("event listener failed")
        for q in self._event_qs:
            q.put_nowait(event)

    def mark_shown(self, seq: int, rewind: bool = False) -> None:
        """Record that the message ``seq`` (and all before it) reached the user.

        An ``on_messages`` callback calls this next to each write to the
        screen; a message not marked is shown again at the next start.
        ``rewind=True`` moves the mark back (the write failed after all)."""
        if self.store is not None and not self._store_closed:
            self.store.mark_shown(seq, rewind)

    def _show_all(self, msgs: List[IncomingMessage]) -> None:
        if not msgs:
            return
        if self._on_messages is not None:
            try:
                self._on_messages(msgs)
            except Exception:  # the display failed; delivery must go on
                log.exception("on_messages callback failed")
            if self._event_qs:
                for m in msgs:
                    self._emit_to_queues(m)
            return
        for m in msgs:
            self._show(m)

    def _emit_to_queues(self, m: IncomingMessage) -> None:
        e = ev_.message(m)
        for q in self._event_qs:
            q.put_nowait(e)

    def _show(self, m: IncomingMessage) -> None:
        if self._on_message is not None:
            self._on_message(m)
            self.store.mark_shown(m.seq)
        elif self._inbox_q is not None:
            self._inbox_q.put_nowait(m)
        else:
            self._shown_backlog.append(m)
        if self._listeners or self._event_qs:
            self._emit(ev_.message(m))

    # -- group commit ---------------------------------------------------------
    def _schedule_flush(self) -> None:
        if self._flush_handle is None and not self._closing:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Commit everything pending in one transaction, then act on it
        (``commit``: what follows, in which order, and what a failure undoes)."""
        self._flush_handle = None
        if self._store_closed:
            return
        batch = self._pending.take(self._sightings.take())
        if batch.empty:
            return
        now = time.time()
        try:
            written = commit.write(batch, self.store, now)
        except Exception as exc:
            log.exception("storage failure: nothing of this batch is acknowledged")
            failed = commit.failure(batch)
            for fut in failed.done:
                if not fut.done():
                    fut.set_exception(PeerError(f"could not queue the message: {exc}"))
            self._pending.not_written(batch)
            self._sightings.not_written(batch.seen)
            # Nothing received in this batch was recorded, so none of it is
            # ACKed: close those connections, and their senders send it all
            # again when they reconnect (a window never waits on lost ACKs).
            for conn in failed.close:
                conn.close()
            self._emit(ev_.error(f"storage failure: {exc}"))
            return
        result = commit.outcome(batch, written, self.user, now)
        # 1. ACK what we recorded (and duplicates), per connection, in order.
        for conn, data in result.acks.items():
            conn.write(data)
        # 2. Hand committed messages to their routes and say they are queued.
        emit = self._emit if (self._listeners or self._event_qs) else None
        touched = set()
        for name, item in result.queued:
            route = self._route(name)
            route.outbox.enqueue(item)
            touched.add(route)
            if emit:
                emit(ev_.queued(name, item.msgid))
        for fut, msgid in result.committed:
            if not fut.done():
                fut.set_result(msgid)
        for route in touched:
            route.pump()
        # 3. Deliveries whose outbox rows are now gone.
        if emit:
            for name, item in result.delivered:
                emit(ev_.delivered(name, item.msgid))
        if result.delivered and self._idle_waiters and not self.unacked:
            waiters, self._idle_waiters = self._idle_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)
        # 4. Show what is new.
        if self._ready and result.shown:
            self._show_all(result.shown)

    # -- connections ------------------------------------------------------------
    def _route(self, name: str) -> Route:
        route = self._routes.get(name)
        if route is None:
            route = self._routes[name] = Route(self._wiring, name, self._backoff)
        return route

    async def _verify_incoming(self, conn: Connection) -> None:
        """Use an incoming connection for sending only if it comes from where
        the directory says its claimed sender lives.

        Receiving on it needs no such check (the receiver records whatever a
        connection sends, under the name it claimed).  Sending over it does:
        otherwise anyone could connect, claim to be bob, and collect (and
        ACK, so lose) everything queued for bob."""
        name = conn.remote
        assert name is not None
        if conn.cert_user is not None:
            # Its certificate proves who it is (SPEC §5.4): no address rule.
            assert conn.cert_fingerprint is not None
            self._check_pin(name, conn.cert_fingerprint)
            if self._held(name):
                log.info("%r: %s's key is not trusted (--strict-keys): receiving only",
                         conn, name)
                return
            self._identified(conn)
            return
        try:
            addr = await self._resolve(name)
        except (DirectoryError, asyncio.TimeoutError):
            addr = None
        if conn.closed or self._closing:
            return
        peer_ip = _plain_ip(conn.peername[0]) if conn.peername else None
        if addr is not None and _plain_ip(addr[0]) == peer_ip:
            self._identified(conn)
        else:
            log.info("%r claims to be %s, who is registered at %s: receiving only", conn, name,
                     addr)
            route = self._routes.get(name)
            if route is not None:
                route.wake()   # maybe online after all: dial the registered address

    def _link_for(self, name: str, addr: Tuple[str, int], unauthenticated: ssl.SSLContext
                  ) -> Tuple[ssl.SSLContext, Optional[str], Plaintext]:
        """How to dial ``name`` (``RouteOwner.link_for``).  A name with an
        enrolled key (``QUERY`` lists its fingerprint): mutual TLS with this
        peer's certificate, requiring that key, never plaintext (SPEC §5.4).
        A name not listed with a key but pinned (a fixed address, a listing
        without the key): mutual TLS requiring the pinned key.  Otherwise (a
        seed peer): TLS that authenticates nobody, plaintext where
        ``--plaintext`` allows the address."""
        if self._held(name):
            raise ConnectionError(self._held_reason(name))
        fp = self._fingerprints.get(name) or (self.pins.get(name) if self.pins else None)
        creds = self.credentials
        if creds is not None and not creds.valid():
            creds = None
        if fp is None:
            if creds is None:
                return unauthenticated, None, self.plaintext
            # Our certificate all the same: an enrolled listener requires
            # one (and, TLS 1.3, says so only after the handshake).
            cached = self._presenting_ctx
            if cached is None or cached[0] is not creds:
                context = dial_context()
                creds.apply(context)
                cached = self._presenting_ctx = (creds, context)
            return cached[1], None, self.plaintext
        if creds is None:
            raise ConnectionError(
                f"{name} has an enrolled key ({fp}): it is reached only over an "
                "authenticated link, and this peer has no valid certificate yet "
                "(it gets one at its next login)")
        cached = self._client_ctx
        if cached is None or cached[0] is not creds:
            cached = self._client_ctx = (creds, creds.client_context())
        return cached[1], fp, Plaintext.OFF

    def _listener_problem(self, name: str, conn: Connection,
                          fp: Optional[str]) -> Optional[str]:
        """``RouteOwner.listener_problem``: the certificate chains to the
        directory CA (the handshake checked that); it must name ``name`` and
        carry ``fp`` (the key the directory listed)."""
        ssl_object = conn.transport.get_extra_info("ssl_object") if conn.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        where = f"{name} at {conn.peername[0]}:{conn.peername[1]}" if conn.peername else name
        if not der:
            return f"{where} presented no certificate; nothing was sent"
        got_user = user_of(der)
        if got_user != name:
            return (f"{where} presented a certificate for {got_user or 'no user'!r}, "
                    f"not {name!r}; nothing was sent, the messages stay queued")
        got_fp = fingerprint(x509.load_der_x509_certificate(der).public_key())
        if fp is not None and got_fp != fp:
            return (f"{where} presented key {got_fp}, but the directory lists {fp} for "
                    f"{name}; nothing was sent, the messages stay queued")
        self._check_pin(name, got_fp)
        if self._held(name):
            return self._held_reason(name)
        conn.certify(name, got_fp)
        self._refusals.pop(name, None)
        return None

    def _check_pin(self, name: str, fp: str) -> None:
        """Pin the first key seen for ``name``; a different one later is a
        ``keychange`` (said once per new key, and again at each start while
        it is not trusted)."""
        pins = self.pins
        if pins is None or name == self.user:
            return
        seen = self._keychanges.get(name)
        if seen == fp:
            return
        check = pins.check(name, fp)
        if check.changed:
            assert check.old is not None
            self._keychanges[name] = fp
            log.warning("the key of %s changed: %s -> %s", name, check.old, fp)
            self._emit(ev_.keychange(name, check.old, fp))
        else:
            self._keychanges.pop(name, None)

    def _held(self, name: str) -> bool:
        """Messages to ``name`` wait for ``/trust`` (--strict-keys, key changed)."""
        return self.strict_keys and self.pins is not None and \
            self.pins.pending(name) is not None

    def _held_reason(self, name: str) -> str:
        return (f"messages to {name} are held: its key changed to "
                f"{self.pins.pending(name) if self.pins else '?'} (--strict-keys); "
                f"/verify {name}, then /trust {name} to send them")

    def trust_key(self, name: str) -> Optional[str]:
        """Accept the key now seen for ``name`` (after a ``keychange``); held
        messages go.  Returns the fingerprint now pinned (None: no key seen)."""
        if self.pins is None:
            raise PeerError("the peer is not running")
        fp = self.pins.trust(name)
        self._keychanges.pop(name, None)
        self._refusals.pop(name, None)
        route = self._routes.get(name)
        if route is not None:
            route.wake()
        return fp

    async def verify(self, name: str) -> Event:
        """The safety number of this user's key and ``name``'s (the key the
        directory lists, else the pinned one), emitted as a ``verify`` event:
        the same digits on both sides when nobody is in between."""
        if not valid_name(name):
            raise PeerError(f"invalid name {name!r}")
        theirs = None
        if self.directory is not None:
            with contextlib.suppress(DirectoryUnavailable, DirectoryError, asyncio.TimeoutError):
                self._note_registrations(await self.directory.query(name))
            theirs = self._fingerprints.get(name) or None
        if theirs is None and self.pins is not None:
            theirs = self.pins.pending(name) or self.pins.get(name)
        if theirs is None:
            raise PeerError(f"no key known for {name} (not online, never seen)")
        own = fingerprint(load_identity_key(self.data_dir).public_key())
        number = format_safety_number(safety_number((self.user, own), (name, theirs)))
        event = ev_.verify(name, number, own, theirs)
        self._emit(event)
        return event

    def _link_refused(self, name: str, reason: str) -> None:
        """Said once per reason (every retry would repeat it)."""
        if self._refusals.get(name) == reason:
            return
        self._refusals[name] = reason
        log.warning("%s", reason)
        self._emit(ev_.error(reason))

    def _identified(self, conn: Connection) -> None:
        """``conn`` now speaks for ``conn.remote``: use it, or settle a duplicate."""
        name = conn.remote
        assert name is not None
        if conn.closed:
            return   # lost already (and off the table): nothing to adopt
        self._connections.identify(conn)
        adopted = self._route(name).adopt(conn, self.user)
        if adopted is None:
            return
        self._connections.drop(adopted.lose, abort=adopted.abort_loser)
        if adopted.probe_kept and self.timings.ack_timeout > 0:
            log.info("%r: %s dialled us anew; probing the connection we keep",
                     adopted.keep, name)
            self._connections.probe_now(adopted.keep)

    def _on_events(self, conn: Connection, events: list, was: Optional[str]) -> None:
        if was is None and conn.remote is not None:
            task = asyncio.ensure_future(self._verify_incoming(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        incoming = self._pending.inc
        for ev in events:
            cls = ev.__class__
            if cls is MessageReceived:
                incoming.append((conn, ev.sender, ev.msgid, ev.text))
            elif cls is AckReceived:
                route = self._routes.get(conn.remote) if conn.remote else None
                if route is not None:
                    route.on_ack(ev.msgid, conn)
            elif cls is PingReceived:
                conn.write(encode_pong(ev.token))
            elif cls is PongReceived:
                fut = self._pings.get(ev.token) if ev.token else None
                if fut is None and ev.token is None and self._pings:
                    fut = next(iter(self._pings.values()))
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif cls is ErrReceived:
                log.warning("%r says: %s", conn, ev.text)
            elif cls is Violation:
                log.warning("%r: %s", conn, ev.reason)
                if ev.reply:
                    conn.write(ev.reply)
                if ev.fatal:
                    conn.close()
        if incoming:
            self._schedule_flush()
        if self._to_pump:
            # ACKs open the window: refill it once per read, not once per ACK.
            routes, self._to_pump = self._to_pump, set()
            for route in routes:
                route.pump()
                self._saw(route.name)   # it acknowledged: online, whatever the directory says

    def _on_conn_lost(self, conn: Connection) -> None:
        """``conn`` is closed (and off the table): its route goes on without it."""
        name = conn.remote
        if name is None:
            return
        route = self._routes.get(name)
        if route is not None:
            route.lost(conn, self._connections.live(name))

    def _on_resume(self, conn: Connection) -> None:
        route = self._routes.get(conn.remote) if conn.remote else None
        if route is not None and route.conn is conn:
            route.pump()

    # -- lookups ------------------------------------------------------------------
    @property
    def _cache(self) -> Dict[str, Tuple[float, Optional[Tuple[str, int]]]]:
        """The lookup cache (``AddressBook.cache``)."""
        return self._book.cache

    async def _resolve(self, name: str) -> Optional[Tuple[str, int]]:
        """Where ``name`` is: a fixed address, a fresh lookup, the directory,
        or (the directory unreachable) the last address known."""
        book = self._book
        if name in book.static:
            return book.static[name]
        if self.directory is None:
            return None
        known, addr = book.known(name, self._loop.time())
        if known:
            return addr
        try:
            regs = await self.directory.query(name)
        except (DirectoryUnavailable, DirectoryError, asyncio.TimeoutError) as exc:
            addr = book.fallback(name)
            if addr is not None:
                return addr   # stale, but the recipient may well still be there
            raise DirectoryUnavailable(str(exc) or "directory unavailable") from None
        self._note_registrations(regs, complete_for=name)
        return book.address(name)

    def _note_registrations(self, regs: Sequence[Registration],
                            complete_for: Optional[str] = None) -> None:
        """Remember addresses; wake routes whose recipient just showed up."""
        for reg in regs:
            self._saw(reg.name)
            self._fingerprints[reg.name] = reg.fingerprint
            if reg.fingerprint:
                self._check_pin(reg.name, reg.fingerprint)
        noted = self._book.note([(reg.name, (reg.address, reg.port)) for reg in regs],
                                self._loop.time(), complete_for)
        for name in noted.moved:
            route = self._routes.get(name)
            if route is not None:
                route.wake()
        if noted.unregistered is not None:
            route = self._routes.get(noted.unregistered)
            if route is not None:
                route.unregistered()

    def _saw(self, name: str) -> None:
        """``name`` is online now (listed by the directory, or it ACKed us)."""
        if self._sightings.saw(name, time.time()):
            self._schedule_flush()

    def last_seen(self, name: str) -> Optional[float]:
        """When this peer last saw ``name`` online (``time.time()``; listed in a
        directory answer, or acknowledging a message), None if never.  Kept in
        the store: "never" means never since this data directory exists."""
        return self._sightings.last_seen(name)

    def _prune_cache(self, now: float) -> int:
        """Drop lookups older than ``CACHE_KEEP`` for names we have nothing
        queued for; returns how many went (``AddressBook.prune``)."""
        routes = self._routes
        return self._book.prune(
            now, lambda name: (route := routes.get(name)) is not None and bool(route.outbox))

    def _on_directory_online(self) -> None:
        self._book.clear()
        for route in self._routes.values():
            route.wake()


class _Wiring:
    """The peer as its edges see it: the ``connections.TableOwner`` of its
    connection table and the ``route.RouteOwner`` of its routes.  Apart from
    ``Peer`` so that the public class shows only its API."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.timings = peer.timings
        self.dial_context = dial_context()
        self.plaintext = peer.plaintext

    # -- both -------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.peer._loop

    @property
    def closing(self) -> bool:
        return self.peer._closing

    @property
    def has_directory(self) -> bool:
        return self.peer.directory is not None

    # -- TableOwner ---------------------------------------------------------------
    def in_flight(self, conn: Connection) -> int:
        route = self.peer._routes.get(conn.remote) if conn.remote is not None else None
        return route.in_flight(conn) if route is not None else 0

    def connection_dead(self, conn: Connection) -> None:
        if conn.remote is not None:
            self.peer._book.expire(conn.remote)   # its address may be what changed

    def events_received(self, conn: Connection, events: List[ProtocolEvent],
                        was: Optional[str]) -> None:
        self.peer._on_events(conn, events, was)

    def connection_lost(self, conn: Connection) -> None:
        self.peer._on_conn_lost(conn)

    def writing_resumed(self, conn: Connection) -> None:
        self.peer._on_resume(conn)

    def full_sweep(self) -> None:
        self.peer._prune_cache(self.peer._loop.time())
        self.peer._refresh_listener()

    # -- RouteOwner ---------------------------------------------------------------
    def live_conn(self, name: str) -> Optional[Connection]:
        return self.peer._connections.live(name)

    async def resolve(self, name: str) -> Optional[Tuple[str, int]]:
        return await self.peer._resolve(name)

    def new_connection(self, name: str) -> Connection:
        return self.peer._connections.new(name, dialled=True)

    def forget(self, name: str) -> None:
        self.peer._book.forget(name)

    def identified(self, conn: Connection) -> None:
        self.peer._identified(conn)

    def link_for(self, name: str, addr: Tuple[str, int]
                 ) -> Tuple[ssl.SSLContext, Optional[str], Plaintext]:
        return self.peer._link_for(name, addr, self.dial_context)

    def listener_problem(self, name: str, conn: Connection,
                         fp: Optional[str]) -> Optional[str]:
        return self.peer._listener_problem(name, conn, fp)

    def link_refused(self, name: str, reason: str) -> None:
        self.peer._link_refused(name, reason)

    def acked(self, route: Route, done: List[OutItem]) -> None:
        peer = self.peer
        name = route.name
        dels = peer._pending.dels
        for item in done:
            dels.append((name, item))
        peer._schedule_flush()
        peer._to_pump.add(route)

    def unreachable(self, route: Route, queued: int, reason: str) -> None:
        peer = self.peer
        peer._emit(ev_.unreachable(route.name, queued, reason, peer.last_seen(route.name)))


__all__ = ["Peer", "PeerError", "Timings", "IncomingMessage"]
