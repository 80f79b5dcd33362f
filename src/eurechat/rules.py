"""The rules and limits of the wire format (SPEC section 1), in one place.

Both framing implementations import this module: the compiled decoder owns
only the fast path that *accepts* a header; whenever a header is rejected,
``diagnose_header`` decides which rule was broken.  That keeps the error
class and its message identical between the two, by construction.
"""

from __future__ import annotations

import re

from .errors import (
    HeaderTooLong,
    InvalidArgument,
    InvalidLength,
    InvalidType,
    MalformedHeader,
    ProtocolError,
    TooManyArgs,
)

#: Header line, LF included.
MAX_HEADER = 4096
#: Arguments after the length.
MAX_ARGS = 64
#: Decoder default for ``max_payload`` (SPEC: peers accept 1 MiB from peers).
MAX_PAYLOAD = 1024 * 1024
#: Longest type name.
MAX_TYPE_LEN = 32
#: Most digits in the length field: ``int()`` never sees an 11-digit number.
MAX_LENGTH_DIGITS = 10

#: The whole header line (without its LF) as a regex: type, length, args,
#: then the tolerated trailing spaces and CR.  The pure decoder's reference
#: path matches it; limits (max_args) and UTF-8 are checked after it.
HEADER_RE = re.compile(
    rb"([A-Za-z0-9_]{1,32}) ([0-9]{1,10})((?: [\x21-\x7e\x80-\xff]+)*) *\r?")
TYPE_RE = re.compile(r"[A-Za-z0-9_]{1,32}")
# An arg, as text: no space, no C0 control, no DEL (bytes >= 0x80 are the
# UTF-8 encoding of non-ASCII characters, which are all allowed).
ARG_RE = re.compile(r"[^\x00-\x20\x7f]+")

__all__ = [
    "MAX_HEADER", "MAX_ARGS", "MAX_PAYLOAD", "MAX_TYPE_LEN", "MAX_LENGTH_DIGITS", "HEADER_RE",
    "check_type", "check_args", "diagnose_header", "header_too_long",
    "check_limits",
]


def check_limits(max_payload: int, max_header: int, max_args: int) -> None:
    """Reject decoder limits that make no sense before any byte is read."""
    if not isinstance(max_payload, int) or max_payload < 0:
        raise ValueError(f"max_payload must be an int >= 0, not {max_payload!r}")
    if not isinstance(max_header, int) or max_header < 8:
        raise ValueError(f"max_header must be an int >= 8, not {max_header!r}")
    if not isinstance(max_args, int) or max_args < 0:
        raise ValueError(f"max_args must be an int >= 0, not {max_args!r}")


def check_type(type: str) -> str:
    """Validate a message type for the encoder; raise ValueError naming the rule."""
    if not isinstance(type, str):
        raise ValueError(f"message type must be str, not {type.__class__.__name__}")
    if not TYPE_RE.fullmatch(type) or not type.isascii():
        raise ValueError(
            f"invalid message type {type!r}: 1-32 characters of [A-Za-z0-9_] required")
    return type


def check_args(args) -> tuple:
    """Validate encoder args; raise ValueError naming the offending one."""
    if isinstance(args, (str, bytes)):
        raise ValueError("args must be a sequence of str, not a single string")
    args = tuple(args)
    if len(args) > MAX_ARGS:
        raise ValueError(f"too many args: {len(args)} > {MAX_ARGS}")
    for i, arg in enumerate(args):
        if not isinstance(arg, str):
            raise ValueError(f"arg {i} must be str, not {arg.__class__.__name__}")
        if not ARG_RE.fullmatch(arg):
            raise ValueError(
                f"invalid arg {i} {arg!r}: non-empty, no space or control character")
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates
            raise ValueError(f"invalid arg {i} {arg!r}: not encodable as UTF-8") from exc
    return args


def header_too_long(max_header: int, messages: list | None = None) -> HeaderTooLong:
    return HeaderTooLong(
        f"header line exceeds max_header ({max_header} bytes, LF included) without LF",
        messages=messages)


def _byte(b: int) -> str:
    return f"0x{b:02x}"


def diagnose_header(line: bytes, max_args: int = MAX_ARGS) -> ProtocolError:
    """Explain why ``line`` (the header without its LF) is not acceptable.

    This is the reference reading of the grammar, left to right; the first
    rule broken is the one reported.  It is only called on rejected input,
    so it is written for clarity, not speed.
    """
    line = bytes(line)
    if line.endswith(b"\r"):
        line = line[:-1]
    body = line.rstrip(b" ")
    # Type: up to the first space.
    sp = body.find(b" ")
    type_b = body if sp < 0 else body[:sp]
    if not type_b:
        return InvalidType("empty message type (header starts with a space or is empty)")
    for b in type_b:
        if not (0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A or b == 0x5F):
            if b < 0x20 or b == 0x7F:
                return MalformedHeader(
                    f"control byte {_byte(b)} in header type"
                    + (" (lone CR)" if b == 0x0D else ""))
            return InvalidType(f"invalid byte {_byte(b)} in message type: [A-Za-z0-9_] only")
    if len(type_b) > MAX_TYPE_LEN:
        return InvalidType(f"message type longer than {MAX_TYPE_LEN} bytes ({len(type_b)})")
    if sp < 0:
        return InvalidLength("missing length after the message type")
    fields = body[sp + 1:].split(b" ")
    length_b = fields[0]
    if not length_b:
        return MalformedHeader("two spaces between type and length: one space separates fields")
    for b in length_b:
        if not 0x30 <= b <= 0x39:
            if b < 0x20 or b == 0x7F:
                return MalformedHeader(
                    f"control byte {_byte(b)} in length" + (" (lone CR)" if b == 0x0D else ""))
            return InvalidLength(
                f"invalid byte {_byte(b)} in length: ASCII digits only (no sign, no space)")
    if len(length_b) > MAX_LENGTH_DIGITS:
        return InvalidLength(f"length has more than {MAX_LENGTH_DIGITS} digits ({len(length_b)})")
    args = fields[1:]
    for i, arg in enumerate(args):
        if not arg:
            return MalformedHeader(f"two spaces before arg {i}: one space separates fields")
        for b in arg:
            if b < 0x20 or b == 0x7F:
                return InvalidArgument(
                    f"control byte {_byte(b)} in arg {i}" + (" (lone CR)" if b == 0x0D else ""))
    if len(args) > max_args:
        return TooManyArgs(f"too many args: {len(args)} > max_args ({max_args})")
    for i, arg in enumerate(args):
        try:
            arg.decode("utf-8")
        except UnicodeDecodeError:
            return InvalidArgument(f"arg {i} is not valid UTF-8")
    # Should be unreachable: the fast path rejected something the reference accepts.
    return MalformedHeader("malformed header")  # pragma: no cover
