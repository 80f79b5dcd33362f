"""Exceptions of eurechat, one class per broken rule.

Both framing implementations raise exactly these classes (they import this
module; nothing is defined twice), so a caller can tell *which* rule of
SPEC section 1 the peer broke without parsing the message text.
"""

from __future__ import annotations

__all__ = [
    "EurechatError",
    "ProtocolError",
    "MalformedHeader",
    "InvalidType",
    "InvalidLength",
    "InvalidArgument",
    "HeaderTooLong",
    "TooManyArgs",
    "FrameTooLarge",
]


class EurechatError(Exception):
    """Root of every error raised by eurechat itself."""


class ProtocolError(EurechatError):
    """The byte stream broke the framing grammar or one of its limits.

    After one of these the stream is no longer trustworthy: a Decoder that
    raised it stays failed.  ``messages`` holds what the failing ``feed()``
    call had decoded *before* the bad header, so a server can still answer
    the requests that arrived ahead of the garbage.
    """

    rule = "framing"

    def __init__(self, message: str, *, messages: list | None = None) -> None:
        super().__init__(message)
        self.messages: list = list(messages) if messages else []


class MalformedHeader(ProtocolError):
    """The header line does not match ``type SP length *(SP arg) *SP [CR] LF``."""

    rule = "header grammar"


class InvalidType(MalformedHeader):
    """The type is empty, longer than 32 bytes or not ``[A-Za-z0-9_]``."""

    rule = "type"


class InvalidLength(MalformedHeader):
    """The length is not 1 to 10 ASCII digits."""

    rule = "length"


class InvalidArgument(MalformedHeader):
    """An argument holds a control byte or is not valid UTF-8."""

    rule = "argument"


class HeaderTooLong(ProtocolError):
    """No LF within ``max_header`` bytes (LF included)."""

    rule = "max_header"


class TooManyArgs(ProtocolError):
    """More than ``max_args`` arguments."""

    rule = "max_args"


class FrameTooLarge(ProtocolError):
    """A well-formed header announced more than ``max_payload`` bytes.

    Only ``parse``/``parse_all`` raise this: their return shape has no place
    for an oversized item.  A ``Decoder`` reports an ``Oversized`` item in
    stream order instead and carries on.
    """

    rule = "max_payload"

    def __init__(self, message: str, *, type: str = "", args: tuple = (),
                 length: int = 0, limit: int = 0, messages: list | None = None) -> None:
        super().__init__(message, messages=messages)
        self.type = type
        self.frame_args = args
        self.length = length
        self.limit = limit
