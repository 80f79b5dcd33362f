"""Helpers of the framing tests: run a chunked stream through a decoder and
record everything observable, so two runs can be compared exactly."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, List, Sequence

from eurechat import framing
from eurechat.errors import ProtocolError


def item_key(item) -> tuple:
    """An item as (class name, fields): equality of keys means identical items."""
    return (item.__class__.__name__, tuple(item))


def trace(decoder_cls, chunks: Iterable[bytes], **limits) -> List[tuple]:
    """Feed ``chunks`` one by one; one entry per feed() call.

    ``("ok", items, buffered, in_frame)`` or, when it raised,
    ``("err", class name, message, messages)``; after an error one more feed
    checks the decoder stays failed with the same class.
    """
    decoder = decoder_cls(**limits)
    out: List[tuple] = []
    for chunk in chunks:
        try:
            items = decoder.feed(chunk)
        except ProtocolError as exc:
            out.append(("err", exc.__class__.__name__, str(exc),
                        [item_key(i) for i in exc.messages]))
            assert decoder.failed
            try:
                decoder.feed(b"PING 0\n")
            except ProtocolError as again:
                out.append(("still failed", again.__class__.__name__, str(again)))
            else:  # pragma: no cover - would be a bug
                out.append(("recovered!",))
            return out
        assert not decoder.failed
        out.append(("ok", [item_key(i) for i in items], decoder.buffered, decoder.in_frame))
    return out


def outcome(decoder_cls, chunks: Iterable[bytes], **limits) -> tuple:
    """What a stream decodes to, whatever its chunking: (items, error or None).

    Items returned before the error and the error's ``.messages`` together are
    everything decoded ahead of the bad header."""
    items: list = []
    error = None
    for entry in trace(decoder_cls, chunks, **limits):
        if entry[0] == "ok":
            items.extend(entry[1])
        elif entry[0] == "err":
            items.extend(entry[3])
            error = (entry[1], entry[2])
            break
    return items, error


def split(data: bytes, cuts: Sequence[int]) -> List[bytes]:
    """``data`` cut at the given offsets (any order, clipped, duplicates ok)."""
    points = sorted({min(max(c, 0), len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])] or [b""]


def bytewise(data: bytes) -> List[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


@contextlib.contextmanager
def using(decoder_cls) -> Iterator:
    """``eurechat.framing`` with parse/parse_all running on ``decoder_cls``."""
    saved = framing.Decoder
    framing.Decoder = decoder_cls
    try:
        yield framing
    finally:
        framing.Decoder = saved
