"""Pure-Python framing decoder: the twin of the compiled ``_framing`` module.

It must behave exactly like ``_framing.pyx``: same items, same errors, raised
at the same point.  Both share ``rules`` (limits, grammar, diagnosis),
``errors`` and ``message``; only the hot loop is written twice.  Keep the two
in lockstep: the differential tests in ``tests/framing`` feed both the same
streams and compare everything they return or raise.

Work is linear in the bytes fed however the stream is chunked: a partial
header is searched for its LF only in the new bytes, and a partial payload
is collected as a list of chunks and joined once, when it is complete.

Each header goes down one of two paths.  The fast path (``_drain_all``) takes the
common case -- no control byte, single spaces, a type and a length seen
before -- iterating a ``BytesIO`` for the header lines, then ``translate``,
``decode``, ``split``, a branch on the number of fields and two dict lookups.
Everything else takes the reference path: ``rules.HEADER_RE``, then
``rules.diagnose_header`` for a rejection.  What the fast path accepts, the
reference path accepts with the same result, so it is purely an optimisation.
"""

from __future__ import annotations

from io import BytesIO
from typing import List, Tuple, Union

from .errors import ProtocolError
from .message import Message, Oversized
from .rules import (
    HEADER_RE,
    MAX_ARGS,
    MAX_HEADER,
    MAX_PAYLOAD,
    check_limits,
    diagnose_header,
    header_too_long,
)

__all__ = ["Decoder"]

Item = Union[Message, Oversized]
Buffer = Union[bytes, bytearray, memoryview]

_fullmatch = HEADER_RE.fullmatch
_new = tuple.__new__
# Types and lengths (as text) seen by the reference path, for the fast path.
# Bounded: a peer inventing types only fills them up to the cap.
_FAST_TYPES: dict = {}
_FAST_TYPES_MAX = 256
_FAST_LENGTHS: dict = {str(i): i for i in range(1024)}
_FAST_LENGTHS_MAX = 8192
# The same lengths, one dict per ``max_payload`` in use, holding only those
# within it: the fast path of ``_drain_all`` then needs no size comparison
# (a longer payload is not found there and takes the reference path, which
# makes the ``Oversized`` item).  Kept up to date as lengths are learned; a
# decoder keeps its dict when this cache is reset, and a length missing from
# it only costs that message the reference path.
_LENGTHS_BY_LIMIT: dict = {}
_LENGTHS_BY_LIMIT_MAX = 16


def _fast_lengths(limit: int) -> dict:
    """The learned lengths (text -> int) that are at most ``limit``."""
    lengths = _LENGTHS_BY_LIMIT.get(limit)
    if lengths is None:
        if len(_LENGTHS_BY_LIMIT) >= _LENGTHS_BY_LIMIT_MAX:
            _LENGTHS_BY_LIMIT.clear()
        # list(): a snapshot, in case another thread is learning a length.
        lengths = {text: n for text, n in list(_FAST_LENGTHS.items()) if n <= limit}
        _LENGTHS_BY_LIMIT[limit] = lengths
    return lengths


def _learn_length(text: str, length: int) -> None:
    """Teach the fast path a length the reference path has read (bounded)."""
    if text not in _FAST_LENGTHS and len(_FAST_LENGTHS) < _FAST_LENGTHS_MAX:
        _FAST_LENGTHS[text] = length
        for limit, lengths in list(_LENGTHS_BY_LIMIT.items()):
            if length <= limit:
                lengths[text] = length


_EMPTY = ()
# Maps the bytes a header may hold (printable ASCII, 0x80-0xfe for UTF-8
# args) to themselves, the control bytes (and 0xff) to 0xff, which is never
# valid UTF-8, and the LF to a space: ``line.translate(_VALID).decode()``
# fails exactly when the line holds a control byte or is not UTF-8, and
# ``split(" ")`` of it ends in an empty field instead of one with the LF.
_VALID = bytes(b if b >= 0x20 and b != 0x7f else 0x20 if b == 0x0a else 0xff
               for b in range(256))
_len = len
#: Builds a Message from ``(type, args, payload)`` with tuple's own C
#: constructor, skipping the validation of ``Message(...)``: the decoder
#: has validated every field already.
_make_message = type.__call__.__get__(Message)


class Decoder:
    """Incremental decoder: bytes in, ``Message``/``Oversized`` items out.

    ``feed()`` returns every item completed by the bytes it was given, in
    stream order.  Limits are checked before memory is committed: a header
    fails as soon as ``max_header`` bytes pass without an LF, and the payload
    of an oversized message is discarded as it streams in, never buffered.
    After a ``ProtocolError`` the decoder stays failed: the stream can no
    longer be trusted, so every later ``feed()`` raises again.
    """

    __slots__ = ("_max_payload", "_lengths", "_max_header", "_max_args", "_chunks", "_have",
                 "_need", "_skip", "_failed", "_busy")

    def __init__(self, max_payload: int = MAX_PAYLOAD, max_header: int = MAX_HEADER,
                 max_args: int = MAX_ARGS) -> None:
        check_limits(max_payload, max_header, max_args)
        self._max_payload = max_payload
        self._lengths = _fast_lengths(max_payload)
        self._max_header = max_header
        self._max_args = max_args
        self._chunks: list = []   # the incomplete tail, as received
        self._have = 0            # bytes in _chunks
        self._need = 0            # bytes the tail must reach (0: header incomplete)
        self._skip = 0            # bytes of an oversized payload still to discard
        self._failed: ProtocolError | None = None
        self._busy = False

    @property
    def max_payload(self) -> int:
        """Largest payload accepted; may be changed between feeds (e.g. after login)."""
        return self._max_payload

    @max_payload.setter
    def max_payload(self, value: int) -> None:
        check_limits(value, self._max_header, self._max_args)
        self._max_payload = value
        self._lengths = _fast_lengths(value)

    @property
    def max_header(self) -> int:
        """Longest header line accepted, LF included (fixed at construction:
        a partial header already counts against it)."""
        return self._max_header

    @property
    def max_args(self) -> int:
        """Most arguments accepted in one header (fixed at construction)."""
        return self._max_args

    @property
    def buffered(self) -> int:
        """Bytes held for the incomplete tail (skipped bytes are never held)."""
        return self._have

    @property
    def in_frame(self) -> bool:
        """True while a frame has started but not finished (for frame timeouts)."""
        return bool(self._have or self._skip)

    @property
    def failed(self) -> bool:
        """True once a ``ProtocolError`` was raised: the decoder stays failed."""
        return self._failed is not None

    def _fail(self, err: ProtocolError) -> ProtocolError:
        self._failed = err
        self._chunks = []
        self._have = self._need = self._skip = 0
        return err

    def feed(self, data: Buffer) -> List[Item]:
        """Consume ``data``; return the items it completed, in stream order."""
        if self._failed is not None:
            err = self._failed
            raise err.__class__(str(err))
        if data.__class__ is not bytes:
            data = bytes(memoryview(data))  # any buffer; never bytes(int)
        # Like the compiled twin (where it protects memory), refuse to be fed
        # from code that runs inside a feed() of this same decoder.
        if self._busy:
            raise RuntimeError("Decoder.feed() re-entered from inside a feed() call")
        self._busy = True
        try:
            if self._skip:
                if len(data) <= self._skip:
                    self._skip -= len(data)
                    return []
                data = data[self._skip:]
                self._skip = 0
            if self._chunks:
                if self._need:
                    self._chunks.append(data)
                    self._have += len(data)
                    if self._have < self._need:
                        return []
                else:
                    room = self._max_header - self._have
                    if data.find(b"\n", 0, room) < 0:
                        if len(data) >= room:
                            raise self._fail(header_too_long(self._max_header))
                        self._chunks.append(data)
                        self._have += len(data)
                        return []
                    self._chunks.append(data)
                data = b"".join(self._chunks)
                self._chunks = []
                self._have = self._need = 0
            items, pos = self._drain(data, -1)
            if pos < len(data):
                tail = data[pos:]
                self._chunks.append(tail)
                self._have = len(tail)
            return items
        finally:
            self._busy = False

    def _drain(self, buf: bytes, limit: int) -> Tuple[List[Item], int]:
        """Decode up to ``limit`` items (all if < 0) from ``buf``; return them
        and the offset of the first byte not consumed.  Sets ``_need`` when a
        payload is incomplete and ``_skip`` when an oversized one runs past
        the end of ``buf``."""
        if limit >= 0:
            return self._drain_some(buf, limit)
        return self._drain_all(buf)

    def _drain_all(self, buf: bytes) -> Tuple[List[Item], int]:
        """``_drain`` of a whole buffer, the fast way.

        Header lines come from iterating a ``BytesIO`` over ``buf`` and
        payloads from its ``read()``: C code that finds the LF and copies
        the bytes, with no offset kept in Python and, for the lines, no
        argument to convert (``bytes.find()`` parses a tuple of arguments on
        every call).  Offsets are recovered with ``tell()`` on the rare
        paths.  Iterated lines are not bounded by ``max_header``, so every
        path checks the length itself; in exchange a line without its LF can
        only be the last one in ``buf``, which is checked once, after the
        loop, rather than once per line.

        Each header goes down one of two paths.  The fast path takes the
        common case -- no control byte, single spaces, a type and a length
        seen before -- with one C pass of ``translate`` (control bytes
        become 0xff, so ``decode`` rejects them along with bad UTF-8, and
        the LF a space, which costs ``split`` one empty last field where
        cutting the LF off would cost a call and a copy), ``split``, a
        branch on the number of fields that unpacks one or two args straight
        into their tuple (no slice, no list, no ``tuple()`` call), and two
        dict lookups.  Everything else (a CR, trailing spaces, a new type,
        an oversized payload, any error) takes the reference path
        (``_reference``).  What the fast path accepts, the reference path
        accepts with the same result, so it is purely an optimisation.
        """
        if self._max_args < 2:
            # The loop below takes one or two args without counting them
            # against ``max_args``; a decoder allowing fewer (eurechat never
            # builds one) takes the generic loop, with the same results.
            return self._drain_some(buf, -1)
        out: list = []
        bio = BytesIO(buf)
        read = bio.read
        tell = bio.tell
        max_header = self._max_header
        max_payload = self._max_payload
        max_args = self._max_args
        valid = _VALID
        fast_types = _FAST_TYPES
        fast_lengths = self._lengths  # only lengths <= max_payload
        n = len(buf)
        # Locals, not globals or builtins, in the loop.
        make = _make_message
        _tuple = tuple
        _len = len
        empty = _EMPTY
        line = b"\n"  # as if the last header were complete (for an empty buf)
        length = "0"  # the length (as text) of the last message taken by the fast path
        for line in bio:
            # Fast path.  Whatever it accepts, the reference path below
            # accepts too, with the same result.  The last field is the
            # empty one after the LF (the line's last, without LF, is
            # handled after the loop); an empty arg is a double or trailing
            # space; every case checks ``max_header`` (iterated lines are
            # unbounded).
            try:
                fields = line.translate(valid).decode().split(" ")
                count = _len(fields)
                if count == 5:
                    type, length, a, b, _ = fields
                    if not a or not b or _len(line) > max_header:
                        raise KeyError
                    args = (a, b)
                elif count == 4:
                    type, length, a, _ = fields
                    if not a or _len(line) > max_header:
                        raise KeyError
                    args = (a,)
                elif count == 3:
                    type, length, _ = fields
                    if _len(line) > max_header:
                        raise KeyError
                    args = empty
                else:
                    type, length, *args, _ = fields  # ValueError for 1-2 fields
                    if "" in args or _len(args) > max_args or _len(line) > max_header:
                        raise KeyError
                    args = _tuple(args)
                # ``out.append``, not a bound ``append``: CPython 3.11+
                # appends in line without a call.
                out.append(make((fast_types[type], args, read(fast_lengths[length]))))
                continue
            except (UnicodeDecodeError, KeyError, ValueError):
                pass
            # Reference path.
            length = "0"  # nothing pending for the end-of-buffer check
            if line[-1] != 10 or _len(line) > max_header:
                # The end of ``buf`` in a header, or a header too long.
                pos = tell() - _len(line)
                if _len(line) >= max_header:
                    raise self._fail(header_too_long(max_header, out))
                return out, pos
            lf = tell() - 1  # the LF ending ``line``; ``bio`` is past it
            pos = lf + 1 - _len(line)
            type, args, size = self._reference(buf, pos, lf, out)
            end = lf + 1 + size
            if size > max_payload:
                out.append(_new(Oversized, (type, args, size)))
                if end > n:
                    self._skip = end - n
                    return out, n
            else:
                if end > n:
                    self._need = end - pos
                    return out, pos
                out.append(make((type, args, buf[lf + 1:end])))
            bio.seek(end)
        if line[-1:] != b"\n":
            # ``buf`` ends in a header, which the fast path took as whole
            # (the reference path returns on a line without LF): the item
            # it made is not a message yet.
            out.pop()
            pos = n - _len(line)
            if _len(line) >= max_header:
                raise self._fail(header_too_long(max_header, out))
            return out, pos
        length = fast_lengths[length]
        if length and _len(out[-1][2]) < length:
            # read() met the end of ``buf``: only the last message
            # can be short, so it is checked here, not per message.
            payload = out.pop()[2]
            self._need = _len(line) + length
            return out, n - _len(payload) - _len(line)
        return out, n

    def _reference(self, buf: bytes, pos: int, lf: int, out: list) -> Tuple[str, tuple, int]:
        """Read the header ``buf[pos:lf]`` the slow, authoritative way.

        Both drain loops send here every header their fast path declines:
        ``rules.HEADER_RE`` accepts it, or ``rules.diagnose_header`` names
        the rule it breaks -- the same diagnosis the compiled twin uses, so
        the error class and text match by construction.  On success it
        returns ``(type, args, length)`` and teaches the fast path this type
        and length; on failure the decoder fails with ``out`` (the items
        decoded before this header) as the error's ``.messages``.
        """
        max_args = self._max_args
        m = _fullmatch(buf, pos, lf)
        if m is not None:
            type_b, length_b, args_b = m.groups()
            args: tuple | None = ()
            if args_b:
                if args_b.count(b" ") > max_args:
                    args = None
                else:
                    try:
                        args = tuple(args_b[1:].decode("utf-8").split(" "))
                    except UnicodeDecodeError:
                        args = None
            if args is not None:
                type = type_b.decode("ascii")
                length = int(length_b)
                if len(_FAST_TYPES) < _FAST_TYPES_MAX:
                    _FAST_TYPES[type] = type
                _learn_length(length_b.decode("ascii"), length)
                return type, args, length
        err = diagnose_header(buf[pos:lf], max_args)
        err.messages = out
        raise self._fail(err)

    def _drain_some(self, buf: bytes, limit: int) -> Tuple[List[Item], int]:
        """``_drain`` for ``parse()`` (limit 1): no per-call decode of the
        whole buffer, which would make ``parse`` of a large buffer pay for
        bytes it never reads.  Same paths, same results."""
        out: list = []
        append = out.append
        find = buf.find
        max_header = self._max_header
        max_payload = self._max_payload
        max_args = self._max_args
        fast_types = _FAST_TYPES
        fast_lengths = _FAST_LENGTHS
        n = len(buf)
        pos = 0
        while pos < n and limit:
            # Unbounded search (one argument less to parse per message); an
            # LF past max_header counts as none: the header is too long.
            lf = find(b"\n", pos)
            if lf < 0 or lf - pos >= max_header:
                if n - pos >= max_header:
                    raise self._fail(header_too_long(max_header, out))
                break
            # Fast path: a header of printable text, single spaces, and a
            # type and length already seen.  Whatever it accepts, the
            # reference path below accepts too, with the same result; the
            # rest (CR, trailing spaces, new types, oversized payloads,
            # errors) is left to the reference path.
            try:
                line = buf[pos:lf].decode()
                fields = tuple(line.split(" "))
                type = fast_types[fields[0]]
                length = fast_lengths[fields[1]]
                args = fields[2:]
            except (UnicodeDecodeError, IndexError, KeyError):
                pass
            else:
                # Without args the line is exactly "TYPE LEN", both checked by
                # the lookups above; with args it must be printable text (no
                # control byte) with no empty arg (no double or trailing space).
                if length <= max_payload and (not args or (
                        line.isprintable() and "" not in args and len(args) <= max_args)):
                    start = lf + 1
                    end = start + length
                    if end > n:
                        self._need = end - pos
                        break
                    append(_make_message((type, args, buf[start:end] if length else b"")))
                    limit -= 1
                    pos = end
                    continue
            type, args, length = self._reference(buf, pos, lf, out)
            start = lf + 1
            end = start + length
            if length > max_payload:
                append(_new(Oversized, (type, args, length)))
                limit -= 1
                if end > n:
                    self._skip = end - n
                    return out, n
                pos = end
                continue
            if end > n:
                self._need = end - pos
                break
            append(_make_message((type, args, buf[start:end])))
            limit -= 1
            pos = end
        return out, pos
