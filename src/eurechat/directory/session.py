"""The directory session of SPEC section 2 as a sans-IO state machine.

Why sans-IO: every rule of the protocol (which request is allowed in which
state, the exact reply texts, when the connection closes, what counts as
oversized) lives here and is unit-tested by feeding bytes and reading the
output, with no socket, event loop, database or clock involved.  The asyncio
front end (``server.py``) only moves bytes and carries out the *effects* this
object asks for (check a password, create an account, verify and store a
BIND, drop a registration), then hands the outcome back with ``resume``.

Flow control is explicit so the front end can apply backpressure: ``receive``
only decodes; requests are answered by ``step(budget)``, which stops once it
has produced ``budget`` bytes of output, when an effect is pending, or when
the session closes.  Requests already received simply wait in ``pending``.
A large read is decoded ``DECODE_SLICE`` bytes at a time, the next slice only
once the requests of the previous one are answered: decoded requests cost
about ten times their wire size in objects, so a client that pipelines a
256 KiB read of tiny requests and then stops reading holds a few hundred
kilobytes of the server's memory as raw bytes, not megabytes of objects.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Callable, List, NamedTuple, Optional, Sequence, Union

from ..errors import ProtocolError
from ..framing import Decoder, Message, Oversized
from ..names import INVALID_PASSWORD, INVALID_USERNAME, valid_password, valid_username
from ..registration import Registration
from .errors import RegistryUnavailable

log = logging.getLogger("eurechat.directory.session")

__all__ = [
    "Session", "SessionConfig", "Output", "Authenticate", "Register", "Bind", "Leave",
    "CertLogin", "Enrol", "Effect", "Result", "State", "PeerCertificate", "valid_username", "valid_password", "normalize_ip",
    "UNAVAILABLE_TEXT",
]

DECODE_SLICE = 16 * 1024
UNAVAILABLE_TEXT = "directory unavailable, retry later"


def normalize_ip(text: str) -> Optional[str]:
    """Canonical text of an IP literal (IPv4-mapped IPv6 as IPv4), None if not one."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0] if "%" in text else text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


class State(str, enum.Enum):
    NEW = "new"
    AUTH = "auth"
    READY = "ready"
    CLOSED = "closed"


class Result(enum.Enum):
    """Outcome of an effect, handed back through ``Session.resume``."""

    OK = "ok"
    FAILED = "failed"            # Authenticate: wrong user or password
    THROTTLED = "throttled"      # Authenticate: too many recent failures
    EXISTS = "exists"            # Register: the name is taken
    INVALID = "invalid"          # Bind: the address did not accept a TCP connection
    UNAVAILABLE = "unavailable"  # any: the backend is down, the session stays open


@dataclass(frozen=True)
class Authenticate:
    """Check ``password`` for ``name`` (throttle first, then the hash)."""

    name: str
    password: bytes = field(repr=False)


@dataclass(frozen=True)
class Register:
    """Create the account ``name`` (already validated)."""

    name: str
    password: bytes = field(repr=False)


@dataclass(frozen=True)
class Bind:
    """Probe ``registration`` with a TCP connect, then store it."""

    registration: Registration


@dataclass(frozen=True)
class Leave:
    """Drop the registration of ``name``."""

    name: str


@dataclass(frozen=True)
class CertLogin:
    """Log ``name`` in by the certificate its TLS session was opened with:
    OK only if ``fingerprint`` (the certificate's key) is ``name``'s enrolled
    key; otherwise the session falls back to a password login."""

    name: str
    fingerprint: str


@dataclass(frozen=True)
class Enrol:
    """``CERT``: certify the key of ``request`` (PEM) for ``name``.  The
    server decides enrol/renew/rotate/reset (``tls.enrolment.decide``) from
    what the session knows of how it was authenticated, and resumes with
    ``(Result.OK, certificate chain)`` or ``(Result.INVALID, reason)``."""

    name: str
    request: bytes = field(repr=False)
    reset: bool
    session_key: Optional[str]   # the enrolled-key certificate the session was opened with
    by_password: bool


Effect = Union[Authenticate, Register, Bind, Leave, CertLogin, Enrol]


class PeerCertificate(NamedTuple):
    """The verified client certificate of a TLS session: the user it names
    (None: not a user's) and its key's fingerprint."""

    user: Optional[str]
    fingerprint: str


@dataclass
class SessionConfig:
    """The knobs of one session; the server shares one instance between sessions."""

    max_payload: int = 64 * 1024          # after authentication
    preauth_max_payload: int = 4 * 1024   # before it
    registration_open: bool = True
    bind_policy: str = "own"              # "own" | "any"
    max_header: int = 4096
    max_args: int = 64
    query_limit: int = 10_000             # QUERY 0 lists at most this many ("truncated")
    ca_pem: bytes = b""                   # the CACERT reply (the directory's CA, PEM)


@dataclass
class Output:
    """What the front end must do after a call: write ``data`` (all of it, in one
    write), then close if ``close``, then carry out ``effect`` if set."""

    data: bytes = b""
    close: bool = False
    effect: Optional[Effect] = None


class _Malformed:
    """Queue marker: the decoder failed here (``error`` says why)."""

    __slots__ = ("error",)

    def __init__(self, error: ProtocolError) -> None:
        self.error = error


Query = Callable[[Optional[str]], Sequence[Registration]]

_EXPECT_USER = "a 'USER <username>' command was expected!"
_EXPECT_PASS = "a 'PASS <password>' command was expected!"
_AUTH_FAILED = "authentication failed"
_THROTTLED = "too many failed attempts, retry later"
_BAD_BIND = "invalid bind notification"
_CERT_NEEDS_TLS = "CERT requires a TLS session"

#: The protocol version a client announces with ``HELLO 0 eurechat/2``.
PROTOCOL_V2 = "eurechat/2"

# Reply frames of single-registration QUERYs, by value: a registration is
# immutable, so its frame can be reused by every session until it changes.
# One table per dialect (eurechat/2 lines have a fourth field).
_FRAMES: dict = {}
_FRAMES_V2: dict = {}
_FRAMES_MAX = 65536
_SOURCES: dict = {}
# (sequence object, limit, frame) of the last QUERY 0 answered in this process,
# per dialect.
_LIST_FRAME: list = [None, 0, b""]
_LIST_FRAME_V2: list = [None, 0, b""]


def _line(reg: Registration) -> str:
    """A QUERY result line of the seed dialect: ``name,address,port``."""
    return reg.line()


def _line_v2(reg: Registration) -> str:
    """A QUERY result line after ``HELLO 0 eurechat/2``: a fourth field, the
    user's key fingerprint (empty while the user has none)."""
    return f"{reg.line()},{getattr(reg, 'fingerprint', '') or ''}"


def _frame(type_: str, text: Union[str, bytes] = b"", args: Sequence[str] = ()) -> bytes:
    """The wire form of one reply: ``Message`` is the only encoder."""
    return bytes(Message(type_, args, text))


_NO_RESULT = _frame("RESULT")
_PONG = _frame("PONG")
# ``Message`` without its constructor's checks, for fields the decoder has
# already validated (the pure decoder builds its messages the same way).
_checked_message = type.__call__


def _pong(args: tuple) -> bytes:
    """The reply to ``PING`` (its args echoed), encoded by ``Message``."""
    if not args:
        return _PONG
    return bytes(_checked_message(Message, ("PONG", args, b"")))


def _result(body: bytes, truncated: bool = False) -> bytes:
    """A ``RESULT`` reply (built once per registration or list, then cached)."""
    return _frame("RESULT", body, ("truncated",) if truncated else ())


def ack(text: str) -> bytes:
    return _frame("ACK", text)


def err(text: str) -> bytes:
    return _frame("ERR", text)


class Session:
    """One client connection's protocol state (bytes in, ``Output`` out).

    ``query`` reads the presence view (synchronous, local: no I/O);
    ``source`` is the client's IP address, used to verify BIND.
    """

    __slots__ = ("config", "query", "source", "state", "user", "decoder", "_queue",
                 "_next", "waiting", "trace", "_inbox", "_pos", "v2", "tls", "peer_cert",
                 "by_password")

    def __init__(self, config: SessionConfig, query: Query, source: str = "",
                 trace: Optional[Callable[[str, bytes], None]] = None) -> None:
        self.config = config
        self.query = query
        # Shared string per client address (many sessions come from one NAT
        # address); normalised only when a BIND needs it.
        self.source = _SOURCES.setdefault(source, source) if len(_SOURCES) < 65536 else source
        self.state = State.NEW
        self.user: Optional[str] = None
        self.decoder = Decoder(config.preauth_max_payload, config.max_header, config.max_args)
        # Requests received but not answered yet: a list and the index of the
        # next one (the decoder's own list, no copy, on the usual path; None
        # when empty, so an idle session holds no container at all).
        self._queue: Optional[List[Union[Message, Oversized, _Malformed]]] = None
        self._next = 0
        self.waiting: Optional[Effect] = None
        self.trace = trace
        # Bytes received but not decoded yet (see DECODE_SLICE), from ``_pos``.
        self._inbox: Optional[bytes] = None
        self._pos = 0
        # Said ``HELLO 0 eurechat/2``: QUERY lines carry the fourth field.
        self.v2 = False
        # Set by the front end: the session is TLS, and the verified client
        # certificate it was opened with (None: none).
        self.tls = False
        self.peer_cert: Optional[PeerCertificate] = None
        # Authenticated by password (not by certificate): what a key reset needs.
        self.by_password = False

    # -- input -------------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """Decode ``data`` into the queue of pending requests (no replies yet);
        beyond ``DECODE_SLICE`` bytes, keep the rest to decode when the queue
        has been answered."""
        if self.state is State.CLOSED or self.decoder.failed:
            return
        if self._inbox is not None:  # order: behind what is still undecoded
            self._inbox = self._inbox[self._pos:] + bytes(data)
            self._pos = 0
            return
        if len(data) > DECODE_SLICE:
            self._inbox = bytes(data)
            self._pos = 0
            self._decode_slice()
            return
        self._decode(data)

    def _decode_slice(self) -> None:
        """Decode the next ``DECODE_SLICE`` bytes of the inbox."""
        inbox, pos = self._inbox, self._pos
        end = pos + DECODE_SLICE
        if end >= len(inbox):
            self._inbox = None
            self._pos = 0
        else:
            self._pos = end
        self._decode(memoryview(inbox)[pos:end])
        if self.decoder.failed:
            self._inbox = None
            self._pos = 0

    def _decode(self, data) -> None:
        try:
            items = self.decoder.feed(data)
        except ProtocolError as exc:
            items = list(exc.messages)
            items.append(_Malformed(exc))
        if items:
            queue = self._queue
            if queue is None:
                self._queue = items
            else:
                self._queue = queue[self._next:] + items
            self._next = 0

    @property
    def pending(self) -> int:
        """Requests decoded and not answered yet (not counting undecoded bytes)."""
        return len(self._queue) - self._next if self._queue is not None else 0

    @property
    def has_input(self) -> bool:
        """Something received is not answered yet (decoded or not)."""
        return self._queue is not None or self._inbox is not None

    @property
    def in_frame(self) -> bool:
        """The client started a frame and has not finished it (for the frame
        timeout).  While undecoded input is held, the decoder's state says
        nothing about the client (a slice may end mid-frame): not counted."""
        return self._inbox is None and self.decoder.in_frame

    @property
    def authenticated(self) -> bool:
        return self.state is State.READY

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    # -- processing --------------------------------------------------------
    def step(self, budget: int = 1 << 62) -> Output:
        """Answer queued requests until ``budget`` bytes of output are produced,
        an effect is needed, the queue is empty or the session closes."""
        data, close, effect = self.run(budget)
        if self._inbox is None or close or effect is not None:
            return Output(data, close, effect)
        parts, size = [data], len(data)
        while data and self.has_input and size < budget and self.waiting is None \
                and self.state is not State.CLOSED:
            data, close, effect = self.run(budget - size)  # the next slice
            parts.append(data)
            size += len(data)
        return Output(b"".join(parts), close, effect)

    def run(self, budget: int = 1 << 62) -> tuple:
        """``step`` as a plain ``(data, close, effect)`` tuple: the front end's hot
        path.  A large read's slices are decoded as the budget allows, so its
        replies still go out in one write per ``budget`` bytes."""
        queue = self._queue
        if self.waiting is not None or self.state is State.CLOSED:
            return b"", False, None
        if queue is None:
            queue = self._refill()
            if queue is None:
                return b"", False, None
        i = self._next
        n = len(queue)
        handle = self._handle
        if n - i == 1 and self._inbox is None:  # the usual case: one request, one reply
            self._queue = None
            self._next = 0
            reply, close, effect = handle(queue[i])
            if close:
                self._close()
            elif effect is not None:
                self.waiting = effect
            return reply, close, effect
        out: List[bytes] = []
        size = 0
        effect = None
        while True:
            try:
                while i < n and size < budget:
                    reply, close, effect = handle(queue[i])
                    i += 1
                    if reply:
                        out.append(reply)
                        size += len(reply)
                    if close:
                        self._close()
                        return b"".join(out), True, None
                    if effect is not None:
                        self.waiting = effect
                        break
            finally:
                if self._queue is queue:
                    if i >= n:
                        self._queue = None
                        self._next = 0
                    else:
                        self._next = i
            if effect is not None or size >= budget or self._queue is not None:
                break
            queue = self._refill()  # this slice is answered: decode the next one
            if queue is None:
                break
            i, n = self._next, len(queue)
        return b"".join(out), False, effect

    def _refill(self):
        """Decode slices of held input until a request comes out (or none is left)."""
        while self._inbox is not None and self._queue is None:
            self._decode_slice()
        return self._queue

    def feed(self, data: bytes, budget: int = 1 << 62) -> Output:
        """``receive`` then ``step``: convenient for tests and simple drivers."""
        self.receive(data)
        return self.step(budget)

    def resume(self, result: Result, budget: int = 1 << 62, detail: bytes = b"") -> Output:
        """Hand back the outcome of the pending effect; continue with the queue.

        ``detail`` is what the backend answered, for effects whose reply
        carries it (``Enrol``: the certificate chain, or why not)."""
        effect = self.waiting
        if effect is None:
            raise RuntimeError("resume() without a pending effect")
        self.waiting = None
        reply, close = self._complete(effect, result, detail)
        if close:
            self._close()
            return Output(reply, True, None)
        rest = self.step(budget)
        return Output(reply + rest.data, rest.close, rest.effect)

    def timeout(self, what: str) -> Output:
        """The front end's timer fired: ``what`` is ``"auth"`` or ``"frame"``."""
        if self.state is State.CLOSED:
            return Output()
        self._close()
        if what == "auth":
            return Output(err("authentication timeout, closing"), True)
        return Output(err("frame not completed in time, closing"), True)

    def _close(self) -> None:
        self.state = State.CLOSED
        self._queue = None
        self._next = 0
        self._inbox = None
        self._pos = 0
        self.waiting = None

    # -- the state table ---------------------------------------------------
    def _handle(self, item) -> tuple:
        """One request: ``(reply bytes, close?, effect or None)``."""
        cls = item.__class__
        if cls is Oversized:
            return err(f"message too large ({item.length} > {self.decoder.max_payload} bytes)"), \
                False, None
        if cls is _Malformed:
            return err(f"malformed message: {item.error}"), True, None
        type_, args, payload = item
        if self.trace is not None:
            self.trace("in", _redact(item))
        if type_ == "PING":
            return _pong(args), False, None
        if type_ == "CACERT" and not args:  # any state, TLS or not
            if not self.config.ca_pem:
                return err("this directory has no TLS identity"), False, None
            return _frame("RESULT", self.config.ca_pem), False, None
        state = self.state
        if state is State.READY:
            return self._ready(type_, args, payload)
        if state is State.NEW:
            if type_ in ("USER", "LOGIN") and len(args) == 1:
                name = args[0]
                # Interned only when it can be an account name (at most 32
                # characters): the name is client-chosen, and interning 4 KiB
                # junk names would grow this process-wide table by 256 MiB.
                self.user = _SOURCES.setdefault(name, name) \
                    if len(_SOURCES) < 65536 and valid_username(name) else name
                self.state = State.AUTH
                cert = self.peer_cert
                if cert is not None and cert.user == name:
                    return b"", False, CertLogin(name, cert.fingerprint)
                return ack(f"hi {args[0]}, authentication required"), False, None
            if type_ == "REGISTER" and 1 <= len(args) <= 2:
                return self._register(args, payload)
            if type_ == "HELLO" and len(args) == 1:
                if args[0] != PROTOCOL_V2:
                    return err(f"unsupported protocol {args[0]}: this directory speaks "
                               f"{PROTOCOL_V2}"), False, None
                self.v2 = True
                return ack(PROTOCOL_V2), False, None
            return err(_EXPECT_USER), True, None
        # AUTH
        if type_ == "PASS" and len(args) <= 1:
            password = payload if payload or not args else args[0].encode("utf-8")
            return b"", False, Authenticate(self.user or "", password)
        return err(_EXPECT_PASS), True, None

    def _register(self, args: tuple, payload: bytes) -> tuple:
        name = args[0]
        password = payload if payload or len(args) < 2 else args[1].encode("utf-8")
        if not self.config.registration_open:
            why = "registration is closed"
        elif not valid_username(name):
            why = INVALID_USERNAME
        elif not valid_password(password):
            why = INVALID_PASSWORD
        else:
            return b"", False, Register(name, password)
        # What happened, in the log (a refused REGISTER is not a failed login).
        log.info("REGISTER of %r from %s refused: %s", name[:64], self.source, why)
        return err(why), False, None

    def _ready(self, type_: str, args: tuple, payload: bytes) -> tuple:
        if type_ == "QUERY" and len(args) <= 1:
            limit = self.config.query_limit
            try:
                # Views return their cached sorted sequence: slicing it is O(limit).
                regs = self.query(args[0] if args else None)
            except RegistryUnavailable:
                return err(UNAVAILABLE_TEXT), False, None
            if not regs:
                return _NO_RESULT, False, None
            v2 = self.v2
            if not args:
                return self._list_frame(regs, limit, v2), False, None
            line = _line_v2 if v2 else _line
            if len(regs) == 1:
                frames = _FRAMES_V2 if v2 else _FRAMES
                frame = frames.get(regs[0])
                if frame is None:
                    body = line(regs[0]).encode("utf-8")
                    frame = _result(body)
                    if len(frames) >= _FRAMES_MAX:
                        frames.clear()
                    frames[regs[0]] = frame
                return frame, False, None
            else:
                body = "\n".join([line(r) for r in regs]).encode("utf-8")
            return _result(body), False, None
        if type_ == "BIND":
            reg = self._check_bind(args)
            if reg is None:
                return err(_BAD_BIND), True, None
            return b"", False, Bind(reg)
        if type_ == "LEAVE" and not args:
            return b"", False, Leave(self.user or "")
        if type_ == "CERT" and (not args or args == ("reset",)):
            if not self.tls:
                return err(_CERT_NEEDS_TLS), False, None
            cert = self.peer_cert
            session_key = cert.fingerprint if cert is not None and cert.user == self.user \
                else None
            return b"", False, Enrol(self.user or "", payload, bool(args), session_key,
                                     self.by_password)
        return err(f"I did not understand the message {type_}"), True, None

    @staticmethod
    def _list_frame(regs: Sequence[Registration], limit: int, v2: bool = False) -> bytes:
        """The ``QUERY 0`` reply.  Views hand out their sorted sequence and never
        mutate one they have handed out (they replace it), so the frame built for
        that very object can be reused until the view changes: on a large
        directory a stream of ``QUERY 0`` costs a lookup, not a join of
        thousands of lines each."""
        cached = _LIST_FRAME_V2 if v2 else _LIST_FRAME
        if cached[0] is regs and cached[1] == limit:
            return cached[2]
        line = _line_v2 if v2 else _line
        if len(regs) > limit:  # one request never builds an unbounded reply
            body = "\n".join([line(r) for r in regs[:limit]]).encode("utf-8")
            frame = _result(body, truncated=True)
        else:
            body = "\n".join([line(r) for r in regs]).encode("utf-8")
            frame = _result(body)
        cached[:] = [regs, limit, frame]
        return frame

    def _check_bind(self, args: tuple) -> Optional[Registration]:
        if len(args) != 2:
            return None
        address = normalize_ip(args[0])
        port_text = args[1]
        if address is None or not port_text.isdigit() or not port_text.isascii() \
                or len(port_text) > 5:
            return None
        port = int(port_text)
        if not 1024 <= port <= 65535:
            return None
        if self.config.bind_policy != "any" and address != (normalize_ip(self.source)
                                                             or self.source):
            return None
        return Registration(self.user or "", address, port, self.v2)

    def _complete(self, effect: Effect, result: Result, detail: bytes = b"") -> tuple:
        """The reply for a finished effect: ``(bytes, close?)``."""
        if isinstance(effect, CertLogin):
            if result is Result.OK:
                self.state = State.READY
                self.decoder.max_payload = self.config.max_payload
                return ack(f"hi {effect.name}, authenticated by certificate"), False
            # Not the enrolled key (rotated away, reset), or the account store
            # is down: the password still works.
            return ack(f"hi {effect.name}, authentication required"), False
        if result is Result.UNAVAILABLE:
            return err(UNAVAILABLE_TEXT), False
        if isinstance(effect, Enrol):
            if result is Result.OK:
                return _frame("RESULT", detail), False
            return _frame("ERR", detail or b"certificate request refused"), False
        if isinstance(effect, Authenticate):
            if result is Result.OK:
                self.state = State.READY
                self.by_password = True
                self.decoder.max_payload = self.config.max_payload
                return ack("successfully authenticated"), False
            if result is Result.THROTTLED:
                return err(_THROTTLED), True
            return err(_AUTH_FAILED), True
        if isinstance(effect, Register):
            if result is Result.OK:
                return ack(f"account {effect.name} created"), False
            return err(f"account {effect.name} already exists"), False
        if isinstance(effect, Bind):
            if result is Result.OK:
                reg = effect.registration
                return ack(f"bound successfully to {reg.address}:{reg.port}"), False
            return err(_BAD_BIND), True
        # Leave
        return ack("deregistered from directory"), False


def _redact(msg: Message) -> bytes:
    """Wire form for ``--trace`` with passwords blanked."""
    type_, args, payload = msg
    if type_ == "PASS":
        return _frame("PASS", b"*" * len(payload), ["*****"] if args else ())
    if type_ == "REGISTER":
        return _frame("REGISTER", b"*" * len(payload), args[:1] + (("*****",) if len(args) > 1 else ()))
    return bytes(msg)
