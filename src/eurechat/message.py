"""The value objects the framing layer produces: ``Message`` and ``Oversized``.

Both are tuple subclasses.  That is a deliberate performance choice: the
compiled decoder can allocate one with a single C call and fill its three
slots, which costs no more than building a plain tuple, while users still get
named, immutable, hashable values.  They compare equal only to their own kind,
never to a bare tuple, so ``Message("PING") != ("PING", (), b"")``.
"""

from __future__ import annotations

from operator import itemgetter
from typing import TYPE_CHECKING, Iterable, Union

from .rules import MAX_HEADER, check_args, check_type

__all__ = ["Message", "Oversized"]

_tuple_new = tuple.__new__


class _MessageType(type):
    """Metaclass of ``Message``: calling ``Message(...)`` validates.

    Why a metaclass and not ``__new__``: a Python ``__new__`` would put a
    Python call in front of every Message, and the decoders build millions
    of them from fields they have already validated.  With the validation
    here, ``Message`` keeps tuple's C constructor, which the pure-Python
    decoder calls directly (``type.__call__(Message, (type, args,
    payload))``) and the compiled one bypasses altogether.
    """

    def __call__(cls, type: str, args: Iterable[str] = (),
                 payload: Union[bytes, bytearray, memoryview, str] = b""):
        check_type(type)
        args = check_args(args)
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        elif isinstance(payload, (bytearray, memoryview)):
            payload = bytes(payload)
        elif not isinstance(payload, bytes):
            raise ValueError(f"payload must be bytes or str, not {payload.__class__.__name__}")
        self = super().__call__((type, args, payload))
        header_len = len(self._header())
        if header_len > MAX_HEADER:
            raise ValueError(f"header would be {header_len} bytes > {MAX_HEADER}")
        return self


class Message(tuple, metaclass=_MessageType):
    """One framed message: ``TYPE LEN args\\n`` followed by ``LEN`` payload bytes.

    ``Message(type, args=(), payload=b"")`` validates type and args at
    construction, so an invalid message can never reach the wire; a ``str``
    payload is encoded as UTF-8.  ``bytes(msg)`` is the exact wire form.
    """

    __slots__ = ()

    if TYPE_CHECKING:  # the signature that _MessageType.__call__ gives it
        def __new__(cls, type: str, args: Iterable[str] = (),
                    payload: Union[bytes, bytearray, memoryview, str] = b"") -> Message: ...

    type = property(itemgetter(0), doc="The message type, e.g. ``'MESSAGE'``.")
    args = property(itemgetter(1), doc="The header arguments, a tuple of str.")
    payload = property(itemgetter(2), doc="The payload bytes.")

    def _header(self) -> bytes:
        type, args, payload = self
        if args:
            return f"{type} {len(payload)} {' '.join(args)}\n".encode()
        return f"{type} {len(payload)}\n".encode("ascii")

    def __bytes__(self) -> bytes:
        return self._header() + self[2]

    def __reduce__(self):
        # Rebuilt through the validating constructor (tuple's own
        # ``__getnewargs__`` protocol would hand it one tuple, unchecked).
        return self.__class__, tuple(self)

    @property
    def text(self) -> str:
        """The payload decoded as UTF-8 (invalid bytes replaced, never raising)."""
        return self[2].decode("utf-8", "replace")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Message):
            return tuple.__eq__(self, other)
        # A bare tuple (or the other item kind) is never equal, whatever its
        # fields: returning NotImplemented would let tuple.__eq__ say yes.
        return False if isinstance(other, tuple) else NotImplemented

    def __ne__(self, other: object) -> bool:
        if isinstance(other, Message):
            return tuple.__ne__(self, other)
        return True if isinstance(other, tuple) else NotImplemented

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        type, args, payload = self
        return f"Message({type!r}, {args!r}, {payload!r})"


class Oversized(tuple):
    """Stands in the stream for a message whose payload exceeded ``max_payload``.

    The decoder reports it as soon as the header is read and then discards
    exactly ``length`` bytes without buffering them, so the messages around
    it are delivered normally and a server can answer it with an ``ERR``.
    """

    __slots__ = ()

    def __new__(cls, type: str, args: Iterable[str] = (), length: int = 0) -> Oversized:
        return _tuple_new(cls, (type, tuple(args), int(length)))

    type = property(itemgetter(0), doc="The message type announced by the header.")
    args = property(itemgetter(1), doc="The header arguments.")
    length = property(itemgetter(2), doc="The announced payload length.")

    def __getnewargs__(self):
        return tuple(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Oversized):
            return tuple.__eq__(self, other)
        # A bare tuple (or the other item kind) is never equal, whatever its
        # fields: returning NotImplemented would let tuple.__eq__ say yes.
        return False if isinstance(other, tuple) else NotImplemented

    def __ne__(self, other: object) -> bool:
        if isinstance(other, Oversized):
            return tuple.__ne__(self, other)
        return True if isinstance(other, tuple) else NotImplemented

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        type, args, length = self
        return f"Oversized({type!r}, {args!r}, {length!r})"
