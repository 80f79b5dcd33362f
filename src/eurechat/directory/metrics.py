"""Prometheus metrics of the directory: ``eurechat-directory --metrics HOST:PORT``.

Every metric is defined here, and the rest of the directory calls the small
functions below (one line at each place something happens), so that the
server, the checker and the supervisor stay readable and the names, labels
and meanings are in one place (documented in docs/directory.md).

Where the numbers live:

- one process (``--workers 1``): prometheus_client's in-process registry; a
  thread of that process answers the scrapes;
- ``--workers N``: prometheus_client's multiprocess mode.  The supervisor
  makes a private directory (``PROMETHEUS_MULTIPROC_DIR``, inherited by the
  workers, removed at exit), every process writes its values to its own
  files there, and only the supervisor serves HTTP, summing them.  A worker
  that exits is marked dead: its gauges drop out, its counters stay (what it
  served is still counted).

Cost: a multiprocess ``inc()`` takes microseconds (a lock and a write to a
memory map), several per request would be a large part of answering a
``QUERY``.  So what happens per request (requests, replies, bytes, session
states) is counted in plain integers by ``CountingSession`` and added to the
metrics every ``FLUSH_INTERVAL`` seconds and at exit; a worker killed by
SIGKILL loses at most that last interval of those counts.  Rare events
(logins, BINDs, probes, restarts) go to the metrics at once.  Without
``--metrics`` nothing is counted: sessions are plain ``Session`` objects and
every hook returns at once.

``directory/session.py`` stays free of all this: ``CountingSession`` wraps
its request handler and its effect completion from the outside.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..message import Message, Oversized
from .session import Authenticate, Bind, Leave, Register, Result, Session, State

log = logging.getLogger("eurechat.directory.metrics")

__all__ = [
    "EXTRA", "available", "enable", "enabled", "CountingSession", "SessionType",
    "transport", "session_closed", "effect_done", "login", "refused", "outage_began",
    "outage_ended", "probe", "removal", "checker_round", "worker_exited", "manager_heal",
    "tls_handshake", "count_registrations", "serve_http", "flush", "make_multiprocess_dir",
    "remove_multiprocess_dir", "PREFIX", "FLUSH_INTERVAL", "url",
]

PREFIX = "eurechat_directory_"
EXTRA = "pip install 'eurechat[metrics]'"
ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_INTERVAL = 1.0

#: Request types with their own label value; anything else is ``other`` (a
#: client chooses the type: it must not choose how many series exist).
REQUEST_TYPES = ("USER", "LOGIN", "PASS", "REGISTER", "BIND", "LEAVE", "QUERY", "PING",
                 "HELLO", "CACERT", "CERT")
#: Reply kinds by the first byte of the frame.
REPLY_KINDS = {ord("A"): "ACK", ord("R"): "RESULT", ord("E"): "ERR", ord("P"): "PONG"}
STATES = (State.NEW, State.AUTH, State.READY)
TRANSPORTS = ("plaintext", "tls")
LOGIN_OUTCOMES = ("ok", "failed", "throttled", "certificate", "unavailable")
OUTAGE_KINDS = {"BIND/LEAVE": "presence", "login": "login", "REGISTER": "register",
                "CERT": "login"}


def available() -> bool:
    """Whether prometheus_client can be imported (without importing it: its
    mode is fixed at import by ``PROMETHEUS_MULTIPROC_DIR``, which the
    supervisor sets later)."""
    import importlib.util
    return importlib.util.find_spec("prometheus_client") is not None


class _Metrics:
    """The metric objects and their pre-bound children (a ``.labels()`` lookup
    per event would cost more than the ``inc``)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

        # ``*_created`` timestamps: one more series per counter, and absent in
        # multiprocess mode anyway (so ``--workers 1`` and N look alike).
        disable_created_metrics()

        def counter(name: str, doc: str, labels: Tuple[str, ...] = ()) -> Any:
            return Counter(PREFIX + name, doc, labels)

        self.sessions = Gauge(
            PREFIX + "sessions", "Open client connections by session state and transport.",
            ("state", "transport"), multiprocess_mode="livesum")
        self.session = {(s, t): self.sessions.labels(s.value, t)
                        for s in STATES for t in TRANSPORTS}
        self.logins = counter("logins_total", "Logins by outcome.", ("outcome",))
        self.login = {o: self.logins.labels(o) for o in LOGIN_OUTCOMES}
        self.requests = counter("requests_total", "Requests received, by type.", ("type",))
        self.request = {t: self.requests.labels(t)
                        for t in REQUEST_TYPES + ("other", "oversized", "malformed")}
        self.replies = counter("replies_total", "Replies sent, by kind.", ("kind",))
        self.reply = {k: self.replies.labels(k) for k in REPLY_KINDS.values()}
        binds = counter("binds_total", "BIND requests by outcome.", ("outcome",))
        self.binds = {r: binds.labels(r) for r in ("ok", "refused", "unavailable")}
        leaves = counter("leaves_total", "LEAVE requests by outcome.", ("outcome",))
        self.leaves = {r: leaves.labels(r) for r in ("ok", "unavailable")}
        accounts = counter("accounts_created_total",
                           "REGISTER requests that reached the account store, by outcome.",
                           ("outcome",))
        self.accounts = {r: accounts.labels(r) for r in ("ok", "exists", "unavailable")}
        self.refused = counter("connections_refused_total",
                               "Connections refused past --max-connections.")
        self.bytes_in = counter("received_bytes_total", "Protocol bytes received from clients.")
        self.bytes_out = counter("sent_bytes_total", "Protocol bytes sent to clients.")
        self.rounds = counter("checker_rounds_total", "Liveness checker rounds completed.")
        probes = counter("checker_probes_total", "Liveness probes by result.", ("result",))
        self.probes = {True: probes.labels("ok"), False: probes.labels("failed")}
        self.removals = counter("checker_removals_total",
                                "Registrations removed by the liveness checker.")
        self.round_seconds = Histogram(
            PREFIX + "checker_round_duration_seconds", "Duration of liveness rounds.",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        outages = counter("backend_outages_total",
                          "Backend outages seen by a worker, by the requests they failed.",
                          ("backend",))
        outage_seconds = Histogram(
            PREFIX + "backend_outage_duration_seconds",
            "Duration of backend outages that ended, as seen by a worker.", ("backend",),
            buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600))
        self.outages = {k: outages.labels(k) for k in OUTAGE_KINDS.values()}
        self.outage_seconds = {k: outage_seconds.labels(k) for k in OUTAGE_KINDS.values()}
        self.restarts = counter("worker_restarts_total",
                                "Workers that died and were restarted by the supervisor.")
        self.heals = counter("manager_heals_total",
                             "Presence Manager deaths healed (new Manager, workers moved).")
        handshakes = counter("tls_handshakes_total", "TLS handshakes by result.", ("result",))
        self.handshakes = {True: handshakes.labels("ok"), False: handshakes.labels("failed")}
        self.effects: Dict[Tuple[type, Result], Any] = {
            (Authenticate, Result.OK): self.login["ok"],
            (Authenticate, Result.FAILED): self.login["failed"],
            (Authenticate, Result.THROTTLED): self.login["throttled"],
            (Authenticate, Result.UNAVAILABLE): self.login["unavailable"],
            (Bind, Result.OK): self.binds["ok"],
            (Bind, Result.INVALID): self.binds["refused"],
            (Bind, Result.UNAVAILABLE): self.binds["unavailable"],
            (Leave, Result.OK): self.leaves["ok"],
            (Leave, Result.UNAVAILABLE): self.leaves["unavailable"],
            (Register, Result.OK): self.accounts["ok"],
            (Register, Result.EXISTS): self.accounts["exists"],
            (Register, Result.UNAVAILABLE): self.accounts["unavailable"],
        }


_M: Optional[_Metrics] = None

# Per-request counts since the last flush (plain ints: see the module docstring).
_REQUEST_LABELS = REQUEST_TYPES + ("other", "oversized", "malformed")
# Requests by the first byte of their reply (0: none yet, an effect), then by
# type: one increment per request counts both (see CountingSession._handle).
_by_reply: List[Optional[Dict[str, int]]] = [None] * 256
for _byte in (0, *REPLY_KINDS):
    _by_reply[_byte] = dict.fromkeys(_REQUEST_LABELS, 0)
_replies: List[int] = [0] * 256        # other replies (effects, timeouts), by first byte
_io: List[int] = [0, 0]                # bytes in, bytes out
_sessions: Dict[Tuple[State, str], int] = {}  # gauge deltas
_flusher: List[Any] = [None]           # the loop whose timer flushes


def enabled() -> bool:
    return _M is not None


def enable(multiprocess: bool) -> None:
    """Create the metrics in this process (once).  ``multiprocess``: values go
    to the files of ``PROMETHEUS_MULTIPROC_DIR`` (set by the supervisor);
    otherwise that variable is ignored (one process needs no files)."""
    global _M, SessionType
    if _M is not None:
        return
    if not multiprocess:
        os.environ.pop(ENV_DIR, None)
    elif not os.environ.get(ENV_DIR):
        raise RuntimeError(f"{ENV_DIR} is not set")
    _M = _Metrics()
    SessionType = CountingSession
    atexit.register(flush)


def make_multiprocess_dir() -> str:
    """The supervisor's private directory for the processes' metric files,
    exported to itself and its future workers (before prometheus_client is
    imported: it reads the variable at import)."""
    path = tempfile.mkdtemp(prefix="eurechat-metrics-")
    os.environ[ENV_DIR] = path
    return path


def remove_multiprocess_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if os.environ.get(ENV_DIR) == path:
        del os.environ[ENV_DIR]


# -- sessions: the per-request counts -----------------------------------------
_NEW, _CLOSED = State.NEW, State.CLOSED


def _count_reply(reply: bytes) -> None:
    if reply:
        _replies[reply[0]] += 1
        _io[1] += len(reply)


_session_handle = Session._handle
_session_run = Session.run


class CountingSession(Session):
    """A ``Session`` that counts its requests, replies, bytes and state for
    the metrics.  Used instead of ``Session`` only with ``--metrics``."""

    __slots__ = ("_counted", "_via")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        Session.__init__(self, *args, **kwargs)
        self._counted: Optional[State] = _NEW   # the state the gauge counts it in
        self._via = "plaintext"
        key = (_NEW, "plaintext")
        _sessions[key] = _sessions.get(key, 0) + 1
        if _flusher[0] is None:
            _start_flushing()

    # What runs per request is kept to two increments (this is the cost of
    # --metrics on a busy directory); bytes and states are counted per read.
    def receive(self, data: bytes) -> None:
        _io[0] += len(data)
        Session.receive(self, data)

    def run(self, budget: int = 1 << 62) -> tuple:
        out = _session_run(self, budget)
        _io[1] += len(out[0])
        if self.state is not self._counted:  # USER: new -> auth
            self._moved()
        return out

    def _handle(self, item: Any) -> tuple:
        out = _session_handle(self, item)
        reply = out[0]
        if item.__class__ is Message:
            try:
                _by_reply[reply[0] if reply else 0][item[0]] += 1  # type: ignore[index]
            except KeyError:  # not a type of the protocol
                _by_reply[reply[0] if reply else 0]["other"] += 1  # type: ignore[index]
        else:
            _by_reply[reply[0] if reply else 0][  # type: ignore[index]
                "oversized" if item.__class__ is Oversized else "malformed"] += 1
        return out

    def _complete(self, effect: Any, result: Result, detail: bytes = b"") -> tuple:
        out = Session._complete(self, effect, result, detail)
        _count_reply(out[0])
        if self.state is not self._counted:
            self._moved()
        return out

    def timeout(self, what: str) -> Any:
        out = Session.timeout(self, what)
        _count_reply(out.data)
        return out

    def _moved(self) -> None:
        """Move this session in the gauge to its new state (a closed session
        stays counted in its last state until its connection is gone:
        ``session_closed``)."""
        state, old = self.state, self._counted
        if state is _CLOSED or old is None:
            return
        _shift((old, self._via), (state, self._via))
        self._counted = state


def _shift(old: Tuple[State, str], new: Tuple[State, str]) -> None:
    _sessions[old] = _sessions.get(old, 0) - 1
    _sessions[new] = _sessions.get(new, 0) + 1


#: What the server instantiates per connection: ``Session``, or
#: ``CountingSession`` once ``enable`` ran.
SessionType: type = Session


def transport(session: Any, name: str) -> None:
    """Count ``session`` under transport ``name`` ("tls" once its handshake
    succeeded; sessions start as "plaintext")."""
    if session.__class__ is CountingSession and session._via != name \
            and session._counted is not None:
        _shift((session._counted, session._via), (session._counted, name))
        session._via = name


def session_closed(session: Any) -> None:
    """The connection of ``session`` is gone: it no longer counts as open."""
    if session is not None and session.__class__ is CountingSession \
            and session._counted is not None:
        key = (session._counted, session._via)
        _sessions[key] = _sessions.get(key, 0) - 1
        session._counted = None


def flush() -> None:
    """Add the per-request counts gathered since the last flush to the metrics."""
    m = _M
    if m is None:
        return
    requests = dict.fromkeys(_REQUEST_LABELS, 0)
    replies = dict.fromkeys(REPLY_KINDS, 0)
    for byte in (0, *REPLY_KINDS):
        counts = _by_reply[byte]
        for kind, n in counts.items():  # type: ignore[union-attr]
            if n:
                counts[kind] -= n  # type: ignore[index]
                requests[kind] += n
                if byte:
                    replies[byte] += n
    for byte in REPLY_KINDS:
        n = _replies[byte]
        if n:
            _replies[byte] -= n
            replies[byte] += n
    for kind, n in requests.items():
        if n:
            m.request[kind].inc(n)
    for byte, n in replies.items():
        if n:
            m.reply[REPLY_KINDS[byte]].inc(n)
    n_in, n_out = _io
    if n_in:
        _io[0] -= n_in
        m.bytes_in.inc(n_in)
    if n_out:
        _io[1] -= n_out
        m.bytes_out.inc(n_out)
    if _sessions:
        items = list(_sessions.items())
        _sessions.clear()
        for key, n in items:
            if n:
                m.session[key].inc(n)


def _start_flushing() -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop (a unit test): flush() by hand
    _flusher[0] = loop

    def tick() -> None:
        flush()
        loop.call_later(FLUSH_INTERVAL, tick)

    loop.call_later(FLUSH_INTERVAL, tick)


# -- events: counted when they happen -----------------------------------------
def effect_done(effect: Any, result: Result) -> None:
    """A session's effect (login, REGISTER, BIND, LEAVE) finished with ``result``."""
    if _M is not None:
        child = _M.effects.get((effect.__class__, result))
        if child is not None:
            child.inc()


def login(outcome: str) -> None:
    """A login with ``outcome`` (one of LOGIN_OUTCOMES) that was not a password
    check: "certificate" for a login by TLS client certificate."""
    if _M is not None:
        _M.login[outcome].inc()


def refused() -> None:
    """A connection refused past --max-connections."""
    if _M is not None:
        _M.refused.inc()


def outage_began(what: str) -> None:
    """A worker's first failed request of kind ``what`` ("BIND/LEAVE", "login",
    "REGISTER": ``OutageLog.what``) since the backend last worked."""
    if _M is not None:
        _M.outages[OUTAGE_KINDS.get(what, "presence")].inc()


def outage_ended(what: str, seconds: float) -> None:
    """The outage of ``what`` ended after ``seconds``."""
    if _M is not None:
        _M.outage_seconds[OUTAGE_KINDS.get(what, "presence")].observe(seconds)


def probe(ok: bool) -> None:
    """One liveness probe: answered (``ok``) or not."""
    if _M is not None:
        _M.probes[ok].inc()


def removal() -> None:
    """The checker removed a registration."""
    if _M is not None:
        _M.removals.inc()


def checker_round(seconds: float) -> None:
    """A liveness round finished after ``seconds``."""
    if _M is not None:
        _M.rounds.inc()
        _M.round_seconds.observe(seconds)


def worker_exited(pid: int, restarted: bool = False) -> None:
    """Supervisor: worker ``pid`` is gone (its gauges no longer count; its
    counters do); ``restarted``: it died and its slot is restarted."""
    if _M is None:
        return
    if restarted:
        _M.restarts.inc()
    if os.environ.get(ENV_DIR):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid)


def manager_heal() -> None:
    """Supervisor: a dead presence Manager is being replaced."""
    if _M is not None:
        _M.heals.inc()


def tls_handshake(ok: bool) -> None:
    """A TLS handshake on the directory's port finished (``ok``) or failed."""
    if _M is not None:
        _M.handshakes[ok].inc()


# -- serving -----------------------------------------------------------------
_registrations: List[Any] = [None, None]  # (what to count, its loop)


def count_registrations(registrations: Callable[[], Any]) -> None:
    """How the process that serves the metrics counts the registrations:
    ``len(registrations())`` (or of what it returns once awaited), run on
    the running loop (where the registry lives) at each scrape.  Call it
    from that loop."""
    if _M is not None:
        _registrations[:] = [registrations, asyncio.get_running_loop()]


async def _count(registrations: Callable[[], Any]) -> int:
    found = registrations()
    if inspect.isawaitable(found):
        found = await found
    return len(found)


class _RegistrationsCollector:
    """``eurechat_directory_registrations``: read from the registry at each
    scrape (it changes in every worker and in the checker; counting events
    would miss registrations made on other hosts)."""

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily
        count, loop = _registrations
        if count is None or loop is None or loop.is_closed():
            return
        try:
            n = asyncio.run_coroutine_threadsafe(_count(count), loop).result(2.0)
        except Exception as exc:  # registry unavailable, or slow: no sample this time
            log.debug("registrations not counted: %r", exc)
            return
        yield GaugeMetricFamily(PREFIX + "registrations",
                                "Registrations (users with a bound address) in the registry.",
                                value=n)

    def describe(self) -> list:
        return []  # collected at scrape only: nothing to call at registration time


#: Where the metrics are served from this process ("" if not).
url = ""


def serve_http(host: str, port: int) -> Tuple[str, int, Any]:
    """Serve ``/metrics`` on ``host:port`` from a thread of this process: the
    supervisor's (the sum of every process's files) or the single process's.
    Returns the address actually bound (``port`` 0 picks one) and the server
    (``shutdown()`` it).  OSError if it cannot listen."""
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
    if os.environ.get(ENV_DIR):
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    registry.register(_RegistrationsCollector())
    server, thread = start_http_server(port, host, registry=registry)
    bound = server.server_address
    global url
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    url = f"http://{shown}:{bound[1]}/metrics"
    return bound[0], bound[1], server


