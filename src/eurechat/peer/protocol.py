"""Sans-IO core of one peer-to-peer connection (SPEC section 4).

Bytes in, events out; no sockets, no clocks, no storage.  The same object
serves both directions of the one TCP connection a pair of peers shares:
``receive()`` turns what arrived into events, the ``encode_*`` helpers make
what we send (through ``Message``, the one encoder of the wire format).

Identity: the ``<sender>`` argument of ``MESSAGE`` is a *claim*.  What a
receiver trusts, and what this class enforces, is that one connection speaks
for one sender: the first ``MESSAGE`` pins the connection's ``remote`` name,
and a later ``MESSAGE`` claiming another name is a protocol violation (the
connection is closed after an ``ERR``).  A connection we dialled ourselves is
pinned from the start to the name we looked up in the directory, because the
directory verified that user's password and BIND address.
"""

from __future__ import annotations

import logging
from typing import List, NamedTuple, Optional, Union

from ..errors import ProtocolError
from ..framing import Decoder, Message, Oversized
from ..names import valid_username

log = logging.getLogger("eurechat.peer.protocol")

#: Inbound payload limit for peer connections (SPEC section 4).
PEER_MAX_PAYLOAD = 1024 * 1024


class MessageReceived(NamedTuple):
    """A chat message; ``msgid`` is None for a seed-style ``MESSAGE`` (``ACK 0``)."""

    sender: str
    msgid: Optional[str]
    text: str


class AckReceived(NamedTuple):
    """``ACK 0 <msgid>``; ``msgid`` None for a seed peer's bare ``ACK 0``."""

    msgid: Optional[str]


class PingReceived(NamedTuple):
    token: Optional[str]


class PongReceived(NamedTuple):
    token: Optional[str]


class ErrReceived(NamedTuple):
    text: str


class Violation(NamedTuple):
    """The remote broke the protocol.  ``reply`` is what to send back
    (already encoded, may be empty); ``fatal`` means close after it."""

    reason: str
    reply: bytes
    fatal: bool


Event = Union[MessageReceived, AckReceived, PingReceived, PongReceived, ErrReceived, Violation]


#: A user name usable on the wire (the one rule of ``eurechat.names``).
valid_name = valid_username


_unchecked = tuple.__new__
_wire = Message.__bytes__


# The frames of the delivery path, one or two per message, are built as
# ``Message`` without validating their fields again (the decoders build
# ``Message`` this way too): the fields are known to be valid already.

def message_frame(sender: str, msgid: str, text: Union[str, bytes]) -> bytes:
    """``encode_message`` of our own ``sender`` (checked by ``valid_name``
    when the peer started) and ``msgid`` (from ``MsgIds``)."""
    return _wire(_unchecked(Message, ("MESSAGE", (sender, msgid),
                                      text.encode("utf-8") if isinstance(text, str) else text)))


def ack_frame(msgid: Optional[str]) -> bytes:
    """``encode_ack`` of a ``msgid`` the decoder accepted."""
    return _wire(_unchecked(Message, ("ACK", () if msgid is None else (msgid,), b"")))


def encode_message(sender: str, msgid: Optional[str], text: Union[str, bytes]) -> bytes:
    """``MESSAGE <len> <sender> [<msgid>]``: a chat message (no msgid: seed style)."""
    return bytes(Message("MESSAGE", (sender,) if msgid is None else (sender, msgid), text))


def encode_ack(msgid: Optional[str]) -> bytes:
    """``ACK 0 [<msgid>]``: recorded (no msgid: a seed peer's bare ACK)."""
    return bytes(Message("ACK", () if msgid is None else (msgid,)))


def encode_ping(token: Optional[str]) -> bytes:
    """``PING 0 [<token>]``: answer with a PONG carrying the same token."""
    return bytes(Message("PING", () if token is None else (token,)))


def encode_pong(token: Optional[str]) -> bytes:
    """``PONG 0 [<token>]``: the answer to a PING."""
    return bytes(Message("PONG", () if token is None else (token,)))


def encode_err(text: str) -> bytes:
    """``ERR <len>`` and ``text``: what the other side did wrong."""
    return bytes(Message("ERR", (), text))


class PeerProtocol:
    """State of one peer connection: decoder, pinned remote identity, failure.

    ``remote`` is None until the connection is identified (we dialled it, or
    the first MESSAGE named its sender).
    """

    __slots__ = ("decoder", "remote", "closed_reason", "max_payload", "certified",
                 "probe_only")

    def __init__(self, remote: Optional[str] = None,
                 max_payload: int = PEER_MAX_PAYLOAD) -> None:
        self.decoder = Decoder(max_payload=max_payload)
        self.max_payload = max_payload
        self.remote = remote
        self.closed_reason: Optional[str] = None
        #: the name the other side's certificate proves (SPEC §5.4): a
        #: MESSAGE from anyone else is refused and the connection closed
        self.certified: Optional[str] = None
        #: the directory's probe: PING is all it may send
        self.probe_only = False

    @property
    def in_frame(self) -> bool:
        return self.decoder.in_frame

    def receive(self, data: bytes) -> List[Event]:
        """Decode ``data``; return the events it completed, in stream order.

        After a fatal ``Violation`` nothing more is decoded: the caller sends
        its ``reply`` and closes.
        """
        if self.closed_reason is not None:
            return []
        try:
            items = self.decoder.feed(data)
        except ProtocolError as exc:
            events = self._interpret(exc.messages)
            if self.closed_reason is None:
                self.closed_reason = f"protocol error: {exc}"
                events.append(Violation(self.closed_reason, encode_err(f"protocol error: {exc}"),
                                        True))
            return events
        return self._interpret(items)

    def _interpret(self, items: list) -> List[Event]:
        out: List[Event] = []
        append = out.append
        for item in items:
            if self.closed_reason is not None:
                break
            if item.__class__ is Oversized:
                append(Violation(
                    f"oversized {item.type} ({item.length} bytes)",
                    encode_err(f"message too large ({item.length} > {self.max_payload} bytes)"),
                    False))
                continue
            type, args, payload = item
            if self.probe_only and type != "PING":
                self.closed_reason = f"the directory's probe sent {type}"
                append(Violation(self.closed_reason, b"", True))
                break
            if type == "MESSAGE":
                if not 1 <= len(args) <= 2 or not valid_name(args[0]):
                    append(self._fatal(f"malformed MESSAGE header {args!r}"))
                    continue
                sender = args[0]
                if self.certified is not None and sender != self.certified:
                    self.closed_reason = (f"{self.certified!r} (by its certificate) sent a "
                                          f"MESSAGE claiming to be {sender!r}")
                    append(Violation(self.closed_reason,
                                     encode_err("sender does not match certificate"), True))
                    break
                if self.remote is None:
                    self.remote = sender
                elif sender != self.remote:
                    append(self._fatal(
                        f"connection of {self.remote!r} sent a MESSAGE claiming to be {sender!r}"))
                    continue
                try:
                    text = payload.decode("utf-8")
                except UnicodeDecodeError:
                    text = payload.decode("utf-8", "replace")
                append(MessageReceived(sender, args[1] if len(args) == 2 else None, text))
            elif type == "ACK":
                append(AckReceived(args[0] if args else None))
            elif type == "PING":
                append(PingReceived(args[0] if args else None))
            elif type == "PONG":
                append(PongReceived(args[0] if args else None))
            elif type == "ERR":
                append(ErrReceived(payload.decode("utf-8", "replace")))
            else:
                append(Violation(f"unknown request {type}",
                                 encode_err(f"I did not understand the message {type}"), False))
        return out

    def _fatal(self, reason: str) -> Violation:
        self.closed_reason = reason
        return Violation(reason, encode_err(reason), True)


__all__ = [
    "PEER_MAX_PAYLOAD", "PeerProtocol", "MessageReceived", "AckReceived", "PingReceived",
    "PongReceived", "ErrReceived", "Violation", "Event", "valid_name", "encode_message",
    "encode_ack", "encode_ping", "encode_pong", "encode_err",
]
