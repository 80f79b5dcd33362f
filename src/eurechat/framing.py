"""The eurechat wire format: ``TYPE LEN args\\n`` followed by ``LEN`` bytes.

This module is the public face of the framing layer (SPEC section 1).  The
decoder exists twice, as compiled Cython (``eurechat._framing``) and as pure
Python (``eurechat.fallback``); the compiled one is used when it imports, and
``EURECHAT_PUREPYTHON=1`` forces the pure one.  ``IMPLEMENTATION`` says which.
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple, Union

from .errors import FrameTooLarge, ProtocolError
from .message import Message, Oversized
from .rules import MAX_ARGS, MAX_HEADER, MAX_PAYLOAD

if os.environ.get("EURECHAT_PUREPYTHON"):
    from .fallback import Decoder
    IMPLEMENTATION = "python"
else:
    try:
        from ._framing import Decoder
        IMPLEMENTATION = "cython"
    except ImportError:  # not built: say so once, never silently pretend
        import warnings
        warnings.warn("eurechat: compiled framing extension not available, "
                      "using the pure-Python decoder", RuntimeWarning, stacklevel=2)
        from .fallback import Decoder
        IMPLEMENTATION = "python"

__all__ = [
    "Message", "Oversized", "Decoder", "parse", "parse_all", "encode",
    "IMPLEMENTATION", "ProtocolError", "FrameTooLarge",
    "MAX_HEADER", "MAX_ARGS", "MAX_PAYLOAD",
]

Buffer = Union[bytes, bytearray, memoryview]


def encode(type: str, args=(), payload: Union[bytes, str] = b"") -> bytes:
    """Wire form of one message: ``bytes(Message(type, args, payload))``."""
    return bytes(Message(type, args, payload))


def _too_large(item: Oversized, max_payload: int) -> FrameTooLarge:
    return FrameTooLarge(
        f"message too large ({item.length} > {max_payload} bytes)",
        type=item.type, args=item.args, length=item.length, limit=max_payload)


def parse(buf: Buffer, max_payload: int = MAX_PAYLOAD, max_header: int = MAX_HEADER,
          max_args: int = MAX_ARGS) -> Tuple[bytes, Optional[Message]]:
    """Split one message off the front of ``buf``.

    Returns ``(rest, message)``, or ``(buf, None)`` while the first message is
    incomplete.  Raises ``ProtocolError`` for malformed input and
    ``FrameTooLarge`` for a payload over ``max_payload``.
    """
    buf = bytes(buf)
    decoder = Decoder(max_payload, max_header, max_args)
    items, pos = decoder._drain(buf, 1)
    if not items:
        return buf, None
    if items[0].__class__ is Oversized:
        raise _too_large(items[0], max_payload)
    return buf[pos:], items[0]


def parse_all(buf: Buffer, max_payload: int = MAX_PAYLOAD, max_header: int = MAX_HEADER,
              max_args: int = MAX_ARGS) -> Tuple[bytes, List[Message]]:
    """Split every complete message off ``buf``: ``(rest, [message, ...])``.

    Linear in ``len(buf)`` (offsets, not re-slicing).  Raises like ``parse``.
    """
    buf = bytes(buf)
    decoder = Decoder(max_payload, max_header, max_args)
    items, pos = decoder._drain(buf, -1)
    for item in items:
        if item.__class__ is Oversized:
            raise _too_large(item, max_payload)
    return buf[pos:], items
