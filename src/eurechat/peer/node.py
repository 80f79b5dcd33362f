"""The asyncio peer: listener, connections, delivery engine, group commits.

How a message travels (SPEC section 4):

1. ``send()`` appends it to the pending outbox batch.  At the next turn of
   the event loop one SQLite transaction commits everything pending (group
   commit); only then is the message ``queued`` (one event per recipient) and
   handed to each recipient's ``_Route``.
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
confirms that the claimed sender is registered at the connection's source IP.  If both sides dialled at
once, the connection dialled by the peer whose name sorts first is kept and
the other one closed (both sides apply the same rule, so they agree without
talking about it); anything unacknowledged on the closed one is sent again.
Of two connections dialled by the same side, the newer is kept (it dials only
after giving the older up).

Dead connections: one that owes us ACKs and has gone silent is probed with a
PING and closed if that goes unanswered too (``Liveness``, run by the sweep),
so a half-open connection costs seconds, not the idle timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import math
import os
import secrets
import socket
import struct
import sys
import termios
import time
from collections import deque
from dataclasses import dataclass
from typing import (
    AsyncIterator,
    Callable,
    Dict,
    Iterable,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

from .directory_client import (
    DirectoryClient,
    DirectoryError,
    DirectoryUnavailable,
    Registration,
    backoff_delay,
)
from .protocol import (
    PEER_MAX_PAYLOAD,
    AckReceived,
    ErrReceived,
    MessageReceived,
    PeerProtocol,
    PingReceived,
    PongReceived,
    Violation,
    encode_ack,
    encode_message,
    encode_ping,
    encode_pong,
    valid_name,
)
from .store import INBOX_RETENTION, PeerStore, default_data_dir

log = logging.getLogger("eurechat.peer.node")

#: A lookup kept this long (seconds) for a name we have nothing queued for,
#: then dropped by the sweep (``Peer._prune_cache``).
CACHE_KEEP = 600.0

#: Largest text ``send()`` accepts: what fits a peer's 1 MiB inbound limit.
MAX_TEXT_BYTES = PEER_MAX_PAYLOAD

#: A sighting (``waiting()``'s ``last_seen``) is written to the store at most
#: this often per name: "seen 3 minutes ago" needs no fsync per lookup.
SEEN_SAVE_EVERY = 600.0

Event = dict


def _env_float(name: str, default: float, zero_ok: bool = False) -> float:
    """``name`` from the environment, if it is a usable setting: finite and
    positive (or zero, where zero means "off").  Anything else is ignored with
    a WARNING that names it: these are tuning knobs, and a typo must neither
    stop the peer nor slip through as ``nan`` (every comparison false: a probe
    never sent), ``inf`` or ``0`` (a window of 0 never sends; a timer of 0
    spins)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and (value > 0 or (zero_ok and value == 0)):
        return value
    log.warning("ignoring %s=%r: not a %s number; using %g", name, raw,
                "non-negative" if zero_ok else "positive", default)
    return default


@dataclass
class Timings:
    """Retry, cache and window settings.  Defaults follow SPEC section 4;
    every one can be overridden from the environment (tests use short ones)."""

    retry_base: float = 0.25        #: first retry delay for an unreachable recipient
    retry_max: float = 30.0         #: backoff cap for recipients (SPEC: 30 s)
    directory_retry_base: float = 0.2
    directory_retry_max: float = 30.0
    query_ttl: float = 2.0          #: how long a QUERY answer is trusted
    directory_wait: float = 3.0     #: a lookup waits this long for a reconnecting directory
    lookup_interval: float = 3.0    #: look an unreachable recipient up at least this often
    connect_timeout: float = 5.0
    #: a PING (``/ping``, or the probe of a silent connection) unanswered this
    #: long has failed
    ping_timeout: float = 5.0
    #: messages of ours unacknowledged and nothing at all received for this
    #: long: probe the connection with a PING (0: never probe).  See ``Liveness``.
    ack_timeout: float = 10.0
    window: int = 1024              #: unacknowledged messages in flight per recipient
    frame_timeout: float = 60.0     #: a frame once started must complete within this
    idle_timeout: float = 300.0     #: close a connection that sent nothing for this long
    rebind_check: float = 30.0      #: check our own registration (and BIND again) this often
    prune_interval: float = 3600.0  #: look for expired inbox records this often
    prune_batch: int = 1000         #: inbox records deleted per pass at most

    @classmethod
    def from_env(cls) -> Timings:
        t = cls()
        t.retry_base = _env_float("EURECHAT_RETRY_BASE", t.retry_base)
        t.retry_max = _env_float("EURECHAT_RETRY_MAX", t.retry_max)
        t.directory_retry_base = _env_float("EURECHAT_DIRECTORY_RETRY_BASE",
                                            t.directory_retry_base)
        t.directory_retry_max = _env_float("EURECHAT_DIRECTORY_RETRY_MAX",
                                           t.directory_retry_max)
        t.query_ttl = _env_float("EURECHAT_QUERY_TTL", t.query_ttl, zero_ok=True)
        t.directory_wait = _env_float("EURECHAT_DIRECTORY_WAIT", t.directory_wait, zero_ok=True)
        t.lookup_interval = _env_float("EURECHAT_LOOKUP_INTERVAL", t.lookup_interval)
        t.connect_timeout = _env_float("EURECHAT_CONNECT_TIMEOUT", t.connect_timeout)
        t.ping_timeout = _env_float("EURECHAT_PING_TIMEOUT", t.ping_timeout)
        t.ack_timeout = _env_float("EURECHAT_ACK_TIMEOUT", t.ack_timeout, zero_ok=True)
        t.window = max(1, int(_env_float("EURECHAT_WINDOW", t.window)))
        t.frame_timeout = _env_float("EURECHAT_FRAME_TIMEOUT", t.frame_timeout)
        t.idle_timeout = _env_float("EURECHAT_IDLE_TIMEOUT", t.idle_timeout)
        t.rebind_check = _env_float("EURECHAT_REBIND_CHECK", t.rebind_check)
        t.prune_interval = _env_float("EURECHAT_PRUNE_INTERVAL", t.prune_interval)
        t.prune_batch = max(1, int(_env_float("EURECHAT_PRUNE_BATCH", t.prune_batch)))
        return t


class IncomingMessage(NamedTuple):
    """A message received and durably recorded; ``msgid`` None from seed peers."""

    sender: str
    msgid: Optional[str]
    text: str
    seq: int


class PeerError(Exception):
    """A request of the API could not be served (bad recipient, no directory...)."""


def _plain_ip(ip: str) -> str:
    """``::ffff:1.2.3.4`` (IPv4 seen through an IPv6 socket) -> ``1.2.3.4``."""
    return ip[7:] if ip.startswith("::ffff:") else ip


class _MsgIds:
    """Message ids: a random 72-bit prefix per process start plus a counter.

    Unique without coordination (the receiver dedupes on (sender, msgid), so
    an id only has to be unique per sender), and far cheaper than drawing
    fresh random bytes for every message."""

    def __init__(self) -> None:
        self.prefix = secrets.token_urlsafe(9)
        self.n = itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.n):x}"


new_msgid = _MsgIds()


class _OutItem:
    """One (recipient, message) of the outbox, held until the recipient ACKs it.

    Only the wire frame is kept (shared by all recipients of one message);
    the text is decoded from it when ``/pending`` asks, so a large outbox
    costs its bytes once, not twice."""

    __slots__ = ("seq", "msgid", "frame", "acked", "created")

    def __init__(self, seq: int, msgid: str, frame: bytes, created: float) -> None:
        self.seq = seq
        self.msgid = msgid
        self.frame = frame
        self.acked = False
        self.created = created   # time.time() of the outbox commit (persisted)

    @property
    def text(self) -> str:
        return self.frame[self.frame.index(b"\n") + 1:].decode("utf-8")


class Liveness:
    """When to probe a connection that owes us an answer, and when to give it up.

    A connection whose other host vanished without a FIN or RST (power cut,
    network change, a NAT or firewall that dropped its state) stays "open"
    here: writes succeed, nothing ever comes back.  Waiting for the idle
    timeout (300 s) would hold our messages that long, so:

    1. **Probe.** Messages of ours are in flight, unacknowledged, and nothing
       at all has arrived for ``ack_timeout`` since we started waiting (the
       later of the last receive and the first write after it that owes us
       an answer, i.e. a MESSAGE or PING, not our ACK or PONG): send a PING.
       An idle connection with nothing in flight is never probed.
    2. **Give up.** Nothing at all arrives within ``ping_timeout`` of the
       probe: the connection is dead.  Anything received (the PONG, an ACK,
       a message) answers the probe.

    One exception keeps slow links working: while our own bytes queued ahead
    of the PING are still being taken by the remote TCP (``delivered``
    grows while something is ``outstanding``), the PING has not reached the
    other side yet, so its clock restarts.  A 1 MiB message on a slow uplink
    is not a dead connection.

    Sans-IO: times (``time.monotonic()``) and byte counts in, a verdict
    out; the caller sends the PING or closes the connection.
    """

    OK = "ok"
    PROBE = "probe"
    DEAD = "dead"

    __slots__ = ("ack_timeout", "ping_timeout", "probe_at", "delivered")

    def __init__(self, ack_timeout: float, ping_timeout: float) -> None:
        self.ack_timeout = ack_timeout
        self.ping_timeout = ping_timeout
        self.probe_at = 0.0    #: when the unanswered probe was sent (0: none)
        self.delivered = 0     #: ``delivered`` at the previous check

    def check(self, now: float, in_flight: bool, last_rx: float, tx_since: float,
              delivered: int = 0, outstanding: int = 0) -> str:
        """One look at the connection.

        ``in_flight``: messages of ours sent on it and unacknowledged;
        ``last_rx``: when anything last arrived; ``tx_since``: when we first
        wrote something owing us an answer after that (<= ``last_rx`` if we
        have not); ``delivered``: bytes the remote TCP has taken so far;
        ``outstanding``: our bytes not yet taken by it (in our buffer or the
        kernel's).  Returns ``OK``,
        ``PROBE`` (send a PING now) or ``DEAD`` (close it)."""
        moved = delivered > self.delivered
        self.delivered = delivered
        if self.probe_at:
            if last_rx > self.probe_at:
                self.probe_at = 0.0          # answered: alive; judge afresh below
            elif outstanding and moved:
                self.probe_at = now          # still pushing what is ahead of the PING
                return self.OK
            elif now - self.probe_at > self.ping_timeout:
                return self.DEAD
            else:
                return self.OK
        if self.due(now, in_flight, last_rx, tx_since):
            self.probe_at = now
            return self.PROBE
        return self.OK

    def due(self, now: float, in_flight: bool, last_rx: float, tx_since: float) -> bool:
        """No probe out, and it is time for one.  ``check`` needs the byte
        counts (a system call) only once this is true or a probe is out, so
        the sweep asks this first."""
        return bool(in_flight and self.ack_timeout > 0 and
                    now - max(last_rx, tx_since) > self.ack_timeout)


#: Linux's SIOCOUTQ (== TIOCOUTQ): bytes in a TCP socket's send queue that
#: the remote has not acknowledged yet.  Elsewhere only our own buffer counts.
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None) if sys.platform.startswith("linux") else None


class _Conn(asyncio.Protocol):
    """Transport edge of one peer connection; the logic is in PeerProtocol and Peer."""

    def __init__(self, node: Peer, remote: Optional[str] = None, dialled: bool = False) -> None:
        self.node = node
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
        t = node.timings
        self.live = Liveness(t.ack_timeout, t.ping_timeout)

    @property
    def remote(self) -> Optional[str]:
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
        self.node._conns_all.add(self)

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
            self.node._on_events(self, events, was)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.node._on_conn_lost(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.node._on_resume(self)

    def write(self, data: bytes, answer_due: bool = False) -> None:
        """``answer_due``: the remote owes us an answer to ``data`` (our
        MESSAGEs an ACK, our PING a PONG), so the wait for one (``Liveness``)
        starts here if it has not yet.  Our ACKs and PONGs owe us nothing:
        counting from one of them would make a reply sent long after we
        acknowledged the other side look silent for all that while."""
        if not self.closed and self.transport is not None:
            if answer_due:
                if self.tx_since <= self.last_rx:
                    self.tx_since = time.monotonic()
                self.node._watch.add(self)
            self.written += len(data)
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close now, dropping what is buffered (``close`` would wait for a
        buffer that a dead remote never drains, and never report the loss)."""
        if not self.closed and self.transport is not None:
            self.transport.abort()

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


class _Waiting(ConnectionError):
    """The recipient is still at an address whose backoff has not run out."""


class _Route:
    """Everything about sending to one recipient: its queue, connection, backoff."""

    def __init__(self, node: Peer, name: str) -> None:
        self.node = node
        self.name = name
        self.queue: deque = deque()          # _OutItem in seq order, until acked
        self.by_id: Dict[str, _OutItem] = {}
        self.sent = 0                        # queue[:sent] went out on self.conn
        self.conn: Optional[_Conn] = None
        #: failures (dials refused or timed out, connections lost before the
        #: recipient ACKed anything on them) since the route last proved
        #: itself with an ACK; the exponent of the backoff
        self.attempt = 0
        self.timer: Optional[asyncio.TimerHandle] = None
        self.connecting: Optional[asyncio.Task] = None
        self.offline_reported = False
        self.failed_addr: Optional[Tuple[str, int]] = None
        self.dial_after = 0.0

    @property
    def connected(self) -> bool:
        """Has a connection that is still open (a lost one does not count)."""
        return self.conn is not None and not self.conn.closed

    def enqueue(self, item: _OutItem) -> None:
        self.queue.append(item)
        self.by_id[item.msgid] = item

    def use(self, conn: Optional[_Conn]) -> None:
        """Send over ``conn`` from now on: everything unacknowledged goes again."""
        if conn is not None and conn.closed:
            # Already lost (its connection_lost has run and will not run
            # again): adopting it would leave the route "connected" to
            # nothing, and nothing would ever dial again.
            conn = None
        if conn is self.conn:
            return
        self.conn = conn
        self.sent = 0
        if conn is not None:
            self._cancel_timer()
        self.pump()   # send, or (no connection after all) get one

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def pump(self) -> None:
        """Send what the window allows, or get a connection if there is none."""
        conn = self.conn
        if conn is None or conn.closed:
            if self.queue and self.connecting is None and self.timer is None:
                self.connect_soon(0 if self.attempt == 0 else None)
            return
        if conn.paused:
            return
        queue = self.queue
        limit = min(len(queue), self.node.timings.window)
        if self.sent >= limit:
            return
        frames = []
        i = self.sent
        while i < limit:
            item = queue[i]
            if not item.acked:
                frames.append(item.frame)
            i += 1
        self.sent = limit
        if frames:
            conn.write(b"".join(frames), answer_due=True)

    def on_ack(self, msgid: Optional[str], conn: _Conn) -> None:
        """An ACK arrived on ``conn``.  Only the connection we send over can
        acknowledge: an ACK on any other connection claiming this recipient's
        name (an impostor we never sent to) would delete messages the
        recipient never got."""
        if conn is not self.conn:
            log.debug("ignoring an ACK from %r: not the connection we send to %s over",
                      conn, self.name)
            return
        if msgid is None:  # a seed peer's bare "ACK 0": the oldest unacked we sent it
            queue = self.queue
            item = next((queue[i] for i in range(min(self.sent, len(queue)))
                         if not queue[i].acked), None)
            if item is None:
                return
            self.by_id.pop(item.msgid, None)
        else:
            item = self.by_id.pop(msgid, None)
            if item is None:
                return  # a duplicate ACK (we sent it twice), nothing to do
        item.acked = True
        # The only place the backoff resets: the recipient recorded something
        # we sent.  A connection that is merely accepted (and identified)
        # proves nothing: a remote that accepts and resets at once would
        # otherwise be redialled in a tight loop.
        self.attempt = 0
        self.offline_reported = False
        self.failed_addr = None
        queue = self.queue
        node = self.node
        while queue and queue[0].acked:
            done = queue.popleft()
            if self.sent:
                self.sent -= 1
            node._pending_del.append((self.name, done))
        node._schedule_flush()
        node._to_pump.add(self)

    def connect_soon(self, delay: Optional[float] = None) -> None:
        """Dial after ``delay`` (None: the backoff for the current attempt)."""
        if self.connecting is not None:
            return
        self._cancel_timer()
        t = self.node.timings
        if delay is None:
            delay = backoff_delay(self.attempt - 1, t.retry_base, t.retry_max)
            if self.failed_addr is not None:
                # That address's own backoff, drawn once when it failed (a
                # second draw of the jitter could fire before it and be refused).
                delay = max(delay, self.dial_after - self.node._loop.time())
            if self.node.directory is not None:
                # Looking the recipient up is cheap; dialling a dead address is
                # not: look up at least every lookup_interval, so a recipient
                # coming back is seen quickly, and re-dial an address that
                # failed only when its own backoff has run out (see _connect).
                delay = min(delay, t.lookup_interval)
        if delay <= 0:
            self.connecting = asyncio.ensure_future(self._connect())
        else:
            self.timer = self.node._loop.call_later(delay, self._timer_fired)

    def _timer_fired(self) -> None:
        self.timer = None
        if not self.connected and self.connecting is None and not self.node._closing:
            self.connecting = asyncio.ensure_future(self._connect())

    def dial_failed(self, addr: Tuple[str, int]) -> None:
        """``addr`` failed us: refused, timed out, or lost before the recipient
        acknowledged anything on it.  It is not dialled again before its
        backoff runs out, unless the recipient is seen anew (``wake``, a new
        address, or a lookup that finds it unregistered)."""
        t = self.node.timings
        self.failed_addr = addr
        self.dial_after = self.node._loop.time() + backoff_delay(
            self.attempt, t.retry_base, t.retry_max)

    def wake(self) -> None:
        """The recipient was just seen: retry now instead of waiting out the backoff."""
        if self.queue and not self.connected and self.connecting is None:
            self._cancel_timer()
            self.connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> bool:
        node = self.node
        try:
            conn = node._live_conn(self.name)
            if conn is None:
                addr = await node._resolve(self.name)
                if self.connected:       # an incoming connection won meanwhile
                    return True
                if addr is None:
                    raise ConnectionError(f"{self.name} is not online")
                conn = node._live_conn(self.name)
                if conn is None and addr == self.failed_addr and \
                        node._loop.time() < self.dial_after:
                    raise _Waiting(f"{self.name} at {addr[0]}:{addr[1]} was unreachable; "
                                   "waiting for its backoff or a new address")
                if conn is None:
                    try:
                        _, conn = await asyncio.wait_for(node._loop.create_connection(
                            lambda: _Conn(node, self.name, dialled=True), addr[0], addr[1]),
                            node.timings.connect_timeout)
                    except (OSError, asyncio.TimeoutError) as exc:
                        node._forget(self.name)
                        self.dial_failed(addr)
                        raise ConnectionError(f"{self.name} at {addr[0]}:{addr[1]}: "
                                              f"{exc or exc.__class__.__name__}") from None
                    if conn.closed:
                        # Reset as soon as it was made (e.g. a listener that
                        # died with us in its accept queue): its
                        # connection_lost has already run, so it is a failed
                        # dial, not a connection.
                        node._forget(self.name)
                        self.dial_failed(addr)
                        raise ConnectionError(f"{self.name} at {addr[0]}:{addr[1]}: "
                                              "connection lost as soon as it was made")
                    conn.addr = addr
                    log.debug("dialled %s at %s", self.name, addr)
            self.connecting = None
            node._identified(conn)
            return True
        except asyncio.CancelledError:
            raise
        except _Waiting as exc:
            # Not a new failure: a lookup found the recipient still at the
            # address that failed, whose backoff has not run out.
            log.debug("not dialling %s yet: %s", self.name, exc)
            return False
        except (ConnectionError, DirectoryError) as exc:
            log.debug("cannot reach %s: %s", self.name, exc)
            if self.queue and not self.offline_reported:
                self.offline_reported = True
                log.info("%s unreachable (%s); %d message(s) stay queued", self.name, exc,
                         len(self.queue))
                # Not one of the --json events of the SPEC: the CLI shows it
                # to humans only; programs may watch for it.
                node._emit({"event": "unreachable", "to": self.name, "queued": len(self.queue),
                            "reason": str(exc), "last_seen": node.last_seen(self.name)})
            self.attempt += 1
            return False
        finally:
            if self.connecting is asyncio.current_task():
                self.connecting = None
            if not self.connected and self.queue and not node._closing and \
                    self.timer is None and self.connecting is None:
                self.connect_soon(None)


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
    """

    def __init__(self, user: str, password: str = "", *,
                 directory: Optional[Tuple[str, int]] = None,
                 listen: Tuple[str, int] = ("127.0.0.1", 0),
                 data_dir: Union[str, os.PathLike, None] = None,
                 register: bool = False,
                 addresses: Optional[Dict[str, Tuple[str, int]]] = None,
                 timings: Optional[Timings] = None,
                 on_message: Optional[Callable[[IncomingMessage], None]] = None,
                 on_messages: Optional[Callable[[List[IncomingMessage]], None]] = None,
                 on_event: Optional[Callable[[Event], None]] = None,
                 inbox_retention: Optional[float] = INBOX_RETENTION) -> None:
        if not valid_name(user):
            raise ValueError(f"invalid user name {user!r}: 1-32 of [A-Za-z0-9_.-], "
                             "not starting with '.' or '-'")
        self.user = user
        self._password = password
        self.directory_address = directory
        self.listen_address = listen
        self.data_dir = data_dir if data_dir is not None else default_data_dir()
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
        self._server: Optional[asyncio.AbstractServer] = None
        self._routes: Dict[str, _Route] = {}
        self._conns: Dict[str, Set[_Conn]] = {}
        self._conns_all: Set[_Conn] = set()
        #: connections that may owe us an answer (written to with
        #: ``answer_due``, or probed): what the sweep checks for liveness
        self._watch: Set[_Conn] = set()
        self._cache: Dict[str, Tuple[float, Optional[Tuple[str, int]]]] = {}
        self._pending_out: list = []
        self._pending_in: list = []
        self._pending_del: list = []
        #: when each name was last seen online (wall clock), what of it is in
        #: the store, and what the next commit writes
        self._seen: Dict[str, float] = {}
        self._seen_saved: Dict[str, float] = {}
        self._pending_seen: Dict[str, float] = {}
        self._to_pump: Set[_Route] = set()
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
            for row in self.store.load_outbox():
                self._route(row.recipient).enqueue(_OutItem(
                    row.seq, row.msgid, encode_message(self.user, row.msgid, row.text),
                    row.created))
            self._seen = self.store.load_seen()
            self._seen_saved = dict(self._seen)
            host, port = self.listen_address
            self._server = await self._loop.create_server(
                lambda: _Conn(self), host or None, port, reuse_address=True)
            sockname = self._server.sockets[0].getsockname()
            self.address = (host or sockname[0], sockname[1])
            self._sweeper = asyncio.ensure_future(self._sweep())
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
                    on_error=lambda text: self._emit({"event": "error", "text": text}),
                    recheck=self.timings.rebind_check)
                await self.directory.start()
        except BaseException:
            await self._shutdown(leave=False)
            raise
        self._ready = True
        self._emit({"event": "ready", "user": self.user,
                    "listen": f"{self.address[0]}:{self.address[1]}"})
        self._show_all([IncomingMessage(row.sender, row.msgid, row.text, row.seq)
                        for row in self.store.unshown()])
        for route in list(self._routes.values()):
            route.pump()

    async def close(self, leave: bool = False) -> None:
        """Stop; with ``leave`` deregister from the directory first.  The outbox
        persists: what is still queued is sent at the next start."""
        await self._shutdown(leave)

    async def _sweep(self) -> None:
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
        of waiting out the idle timeout."""
        t = self.timings
        limit = t.frame_timeout
        idle = t.idle_timeout
        full = max(0.05, min(10.0, limit / 2, idle / 2))
        period = full
        if t.ack_timeout > 0:
            # Quarters: a dead connection is given up at most half a
            # ping_timeout and a quarter of an ack_timeout late.  Only the
            # connections that owe us something (``_watch``) are looked at
            # this often; all of them, at the old pace (10 k connections
            # cost some 20 ms a pass).
            period = max(0.05, min(full, t.ack_timeout / 4, t.ping_timeout / 4))
        next_full = time.monotonic() + full
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in list(self._watch):
                self._check_live(conn, now)
            if now < next_full:
                continue
            next_full = now + full
            self._prune_cache(self._loop.time())
            for conn in list(self._conns_all):
                if conn.frame_since and now - conn.frame_since > limit:
                    if not self._closed_before(conn):
                        log.warning("%r: frame unfinished after %.0f s, closing", conn, limit)
                        conn.close()
                elif now - conn.last_rx > idle:
                    if not self._closed_before(conn):
                        log.info("%r: idle for %.0f s, closing", conn, now - conn.last_rx)
                        conn.close()

    @staticmethod
    def _closed_before(conn: _Conn) -> bool:
        """``conn`` was closed by an earlier sweep and is still here: the
        graceful close waits for our unsent bytes, which this remote does not
        take (a shut window, a vanished host; TCP gives up after minutes, or
        never).  Abort it; True if it was closing."""
        if conn.transport is not None and conn.transport.is_closing():
            conn.abort()
            return True
        return False

    def _check_live(self, conn: _Conn, now: float) -> None:
        """Probe ``conn`` or give it up, as ``Liveness`` says (see there)."""
        route = self._routes.get(conn.remote) if conn.remote is not None else None
        in_flight = route.sent if route is not None and route.conn is conn else 0
        live = conn.live
        if not live.probe_at:
            if not in_flight:
                # Nothing owed (an idle connection: only the idle timeout
                # applies): not watched until we send something on it again.
                self._watch.discard(conn)
                return
            if not live.due(now, True, conn.last_rx, conn.tx_since):
                return   # not silent for long: no byte count (an ioctl) to take yet
        verdict = live.check(now, in_flight > 0, conn.last_rx, conn.tx_since, *conn.progress())
        if verdict is Liveness.PROBE:
            log.info("%r: %d message(s) unacknowledged and nothing received for %.1f s: "
                     "probing with PING", conn, in_flight, now - max(conn.last_rx, conn.tx_since))
            conn.write(encode_ping("probe"))
        elif verdict is Liveness.DEAD:
            log.warning("%r: no answer to a PING within %.1f s (nothing received for %.1f s, "
                        "%d message(s) unacknowledged): the other side is gone or the "
                        "connection half-open; closing it, to look %s up and send again",
                        conn, live.ping_timeout, now - conn.last_rx, in_flight, conn.remote)
            if conn.remote is not None:
                self._expire(conn.remote)   # its address may be what changed
            conn.abort()

    def _probe_now(self, conn: _Conn) -> None:
        """Doubt ``conn`` at once: PING it; the sweep closes it if nothing at
        all comes back within ``ping_timeout`` (``Liveness``)."""
        live = conn.live
        if live.probe_at or conn.closed:
            return
        now = time.monotonic()
        live.check(now, False, conn.last_rx, conn.tx_since, *conn.progress())  # (baseline)
        live.probe_at = now
        self._watch.add(conn)
        conn.write(encode_ping("probe"))

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
            route._cancel_timer()
            if route.connecting is not None:
                route.connecting.cancel()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        if self.store is not None:
            # Sightings kept only in memory (SEEN_SAVE_EVERY) go with the last commit.
            for name, at in self._seen.items():
                if self._seen_saved.get(name) != at:
                    self._pending_seen[name] = at
            with contextlib.suppress(Exception):
                self._flush()
        for conn in list(self._conns_all):
            conn.close()
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
        self._pending_out.append((msgid, text, names, fut))
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
            if route.connecting is None:
                route._cancel_timer()
                route.connecting = asyncio.ensure_future(route._connect())
            task = route.connecting
            await asyncio.shield(task)
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
        if self._pending_out and not self._closing and not self._store_closed:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush()
        out = []
        for route in self._routes.values():
            for item in route.queue:
                if not item.acked:
                    out.append((item.seq, {"to": route.name, "id": item.msgid,
                                           "text": item.text}))
        for msgid, text, names, _fut in self._pending_out:   # only while closing
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
        if self._pending_out and not self._closing and not self._store_closed:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush()
        now = time.time()
        out = []
        for route in self._routes.values():
            items = [item for item in route.queue if not item.acked]
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
        return sum(len(r.queue) for r in self._routes.values()) + len(self._pending_out)

    async def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Wait until nothing is queued (True) or ``timeout`` passes (False)."""
        deadline = None if timeout is None else self._loop.time() + timeout
        while self.unacked or self._pending_del:
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
        e = {"event": "message", "from": m.sender, "id": m.msgid, "text": m.text}
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
            self._emit({"event": "message", "from": m.sender, "id": m.msgid, "text": m.text})

    # -- group commit ---------------------------------------------------------
    def _schedule_flush(self) -> None:
        if self._flush_handle is None and not self._closing:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Commit everything pending in one transaction, then act on it."""
        self._flush_handle = None
        if self._store_closed:
            return
        out, self._pending_out = self._pending_out, []
        inc, self._pending_in = self._pending_in, []
        dels, self._pending_del = self._pending_del, []
        seen, self._pending_seen = self._pending_seen, {}
        if not (out or inc or dels or seen):
            return
        store = self.store
        now = time.time()
        out_seqs: List[List[int]] = []
        in_seqs: List[Optional[int]] = []
        try:
            with store.transaction(durable=bool(out or inc)):
                if dels:
                    store.remove_outgoing([item.seq for _, item in dels])
                if seen:
                    store.note_seen(list(seen.items()))
                for msgid, text, names, _fut in out:
                    out_seqs.append(store.add_outgoing(
                        [(n, msgid, text, now) for n in names]))
                record = store.record_incoming
                for _conn, sender, msgid, text in inc:
                    in_seqs.append(record(sender, msgid, text, now))
        except Exception as exc:
            log.exception("storage failure: nothing of this batch is acknowledged")
            for _msgid, _text, _names, fut in out:
                if not fut.done():
                    fut.set_exception(PeerError(f"could not queue the message: {exc}"))
            self._pending_del[:0] = dels
            for name, at in seen.items():
                self._pending_seen.setdefault(name, at)
                self._seen_saved.pop(name, None)
            # Nothing received in this batch was recorded, so none of it is
            # ACKed: close those connections, and their senders send it all
            # again when they reconnect (a window never waits on lost ACKs).
            for conn in {c for c, _s, _m, _t in inc}:
                conn.close()
            self._emit({"event": "error", "text": f"storage failure: {exc}"})
            return
        # 1. ACK what we recorded (and duplicates), per connection, in order.
        acks: Dict[_Conn, List[bytes]] = {}
        shown: List[IncomingMessage] = []
        for (conn, sender, msgid, text), seq in zip(inc, in_seqs):
            acks.setdefault(conn, []).append(encode_ack(msgid))
            if seq is not None:
                shown.append(IncomingMessage(sender, msgid, text, seq))
        for conn, frames in acks.items():
            conn.write(b"".join(frames))
        # 2. Hand committed messages to their routes and say they are queued.
        emit = self._emit if (self._listeners or self._event_qs) else None
        touched = set()
        for (msgid, text, names, fut), seqs in zip(out, out_seqs):
            frame = encode_message(self.user, msgid, text)
            for name, seq in zip(names, seqs):
                route = self._route(name)
                route.enqueue(_OutItem(seq, msgid, frame, now))
                touched.add(route)
                if emit:
                    emit({"event": "queued", "to": name, "id": msgid})
            if not fut.done():
                fut.set_result(msgid)
        for route in touched:
            route.pump()
        # 3. Deliveries whose outbox rows are now gone.
        if emit:
            for name, item in dels:
                emit({"event": "delivered", "to": name, "id": item.msgid})
        if dels and self._idle_waiters and not self.unacked:
            waiters, self._idle_waiters = self._idle_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)
        # 4. Show what is new.
        if self._ready and shown:
            self._show_all(shown)

    # -- connections ------------------------------------------------------------
    def _route(self, name: str) -> _Route:
        route = self._routes.get(name)
        if route is None:
            route = self._routes[name] = _Route(self, name)
        return route

    def _live_conn(self, name: str) -> Optional[_Conn]:
        for conn in self._conns.get(name, ()):
            if not conn.closed:
                return conn
        return None

    async def _verify_incoming(self, conn: _Conn) -> None:
        """Use an incoming connection for sending only if it comes from where
        the directory says its claimed sender lives.

        Receiving on it needs no such check (the receiver records whatever a
        connection sends, under the name it claimed).  Sending over it does:
        otherwise anyone could connect, claim to be bob, and collect (and
        ACK, so lose) everything queued for bob."""
        name = conn.remote
        assert name is not None
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

    def _identified(self, conn: _Conn) -> None:
        """``conn`` now speaks for ``conn.remote``: use it, or settle a duplicate."""
        name = conn.remote
        assert name is not None
        if conn.closed:
            return   # lost already (and forgotten by _on_conn_lost): nothing to adopt
        conns = self._conns.setdefault(name, set())
        conns.add(conn)
        route = self._route(name)
        current = route.conn
        if current is None or current.closed or current is conn:
            # No backoff reset here: only an ACK proves the route (on_ack).
            route.use(conn)
            return
        # Two connections for one pair: keep the one dialled by the smaller
        # name (both sides apply that rule to a simultaneous dial, so they
        # agree).  Both dialled by the same side: it dials only when it has no
        # connection, so it gave the older one up (closed it, or lost it
        # without our hearing: its host vanished, it restarted, a NAT forgot
        # the mapping); keeping the older one would close, at once, every
        # connection it makes, until the dead one idles out.
        keep_mine = self.user < name
        if current.dialled == conn.dialled:
            keep = conn
        else:
            keep = current if current.dialled == keep_mine else conn
        lose = conn if keep is current else current
        log.debug("duplicate connection with %s: keeping %r, closing %r", name, keep, lose)
        route.use(keep)
        conns.discard(lose)
        if lose.dialled == keep.dialled:
            # Given up by its dialler: nobody will ever read what is still
            # buffered on it, and a graceful close would wait for that
            # (until TCP gives up, minutes; for ever behind a shut window).
            lose.abort()
        else:
            lose.close()
        if keep is current and self.timings.ack_timeout > 0:
            # Either both dialled at once (then ``current`` is alive and
            # answers at once), or the other side gave ``current`` up and
            # dialled anew: then ``current`` is dead without our knowing,
            # and keeping it would close every new connection of theirs
            # until it idles out.  A PING tells the two apart.
            log.info("%r: %s dialled us anew; probing the connection we keep", current, name)
            self._probe_now(current)

    def _on_events(self, conn: _Conn, events: list, was: Optional[str]) -> None:
        if was is None and conn.remote is not None:
            task = asyncio.ensure_future(self._verify_incoming(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        incoming = self._pending_in
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

    def _on_conn_lost(self, conn: _Conn) -> None:
        self._conns_all.discard(conn)
        self._watch.discard(conn)
        name = conn.remote
        if name is None:
            return
        conns = self._conns.get(name)
        if conns is not None:
            conns.discard(conn)
        route = self._routes.get(name)
        if route is not None and route.conn is conn:
            route.conn = None
            route.sent = 0
            other = self._live_conn(name)
            if other is not None:
                route.use(other)
            elif not self._closing and route.queue:
                # Proven since the last failure (an ACK reset the count): a
                # working connection dropped, redial at once.  Otherwise it
                # was lost before the recipient acknowledged anything on it,
                # which is as good as a failed dial: back off, for that
                # address too (a directory lookup finding it unchanged must
                # not redial it).
                first = route.attempt == 0
                if not first and conn.addr is not None:
                    route.dial_failed(conn.addr)
                route.attempt += 1
                route.connect_soon(0 if first else None)

    def _on_resume(self, conn: _Conn) -> None:
        route = self._routes.get(conn.remote) if conn.remote else None
        if route is not None and route.conn is conn:
            route.pump()

    # -- lookups ------------------------------------------------------------------
    async def _resolve(self, name: str) -> Optional[Tuple[str, int]]:
        if name in self.addresses:
            return self.addresses[name]
        if self.directory is None:
            return None
        now = self._loop.time()
        cached = self._cache.get(name)
        if cached is not None and now - cached[0] < self.timings.query_ttl:
            return cached[1]
        try:
            regs = await self.directory.query(name)
        except (DirectoryUnavailable, DirectoryError, asyncio.TimeoutError) as exc:
            if cached is not None and cached[1] is not None:
                return cached[1]   # stale, but the recipient may well still be there
            raise DirectoryUnavailable(str(exc) or "directory unavailable") from None
        self._note_registrations(regs, complete_for=name)
        return self._cache[name][1]

    def _note_registrations(self, regs: Sequence[Registration],
                            complete_for: Optional[str] = None) -> None:
        """Remember addresses; wake routes whose recipient just showed up."""
        now = self._loop.time()
        seen = set()
        for reg in regs:
            seen.add(reg.name)
            self._saw(reg.name)
            prev = self._cache.get(reg.name)
            self._cache[reg.name] = (now, (reg.address, reg.port))
            if prev is None or prev[1] != (reg.address, reg.port):
                route = self._routes.get(reg.name)
                if route is not None:
                    route.wake()
        if complete_for is not None and complete_for not in seen:
            self._cache[complete_for] = (now, None)
            route = self._routes.get(complete_for)
            if route is not None:
                # Not registered: when it is registered again, that is a new
                # registration (a restart, maybe at the very address that
                # failed before): dial it at once, not after that address's backoff.
                route.failed_addr = None

    def _saw(self, name: str) -> None:
        """``name`` is online now (listed by the directory, or it ACKed us)."""
        now = time.time()
        self._seen[name] = now
        saved = self._seen_saved.get(name)
        if saved is None or now - saved >= SEEN_SAVE_EVERY:
            self._seen_saved[name] = now
            self._pending_seen[name] = now
            self._schedule_flush()

    def last_seen(self, name: str) -> Optional[float]:
        """When this peer last saw ``name`` online (``time.time()``; listed in a
        directory answer, or acknowledging a message), None if never.  Kept in
        the store: "never" means never since this data directory exists."""
        at = self._seen.get(name)
        return None if at is None else round(at, 3)

    def _forget(self, name: str) -> None:
        self._cache.pop(name, None)

    def _prune_cache(self, now: float) -> int:
        """Drop lookups older than ``CACHE_KEEP`` for names we have nothing
        queued for; returns how many went.

        Every name an incoming connection *claims* is looked up (to decide
        whether we may send over it), and so is every name a ``/who`` lists:
        without this the cache grows by one entry per name ever seen, which a
        stranger claiming random names can drive.  A recipient with messages
        waiting keeps its entry: when the directory is unreachable, its last
        known address is still worth a dial."""
        old = [name for name, (at, _) in self._cache.items()
               if now - at > CACHE_KEEP
               and not ((route := self._routes.get(name)) is not None and route.queue)]
        for name in old:
            del self._cache[name]
        return len(old)

    def _expire(self, name: str) -> None:
        """Look ``name`` up afresh next time, but keep its address as the
        fallback for a directory that is unreachable just then."""
        cached = self._cache.get(name)
        if cached is not None:
            self._cache[name] = (float("-inf"), cached[1])

    def _on_directory_online(self) -> None:
        self._cache.clear()
        for route in self._routes.values():
            route.wake()


__all__ = ["Peer", "Timings", "IncomingMessage", "PeerError", "new_msgid", "MAX_TEXT_BYTES"]
