"""Fuzz target: the compiled and the pure framing decoders, side by side.

Both get the same bytes, cut at the same fuzzer-chosen points, with the same
fuzzer-chosen limits.  Any difference in what they return or raise is a
finding: items, error class and text, ``ProtocolError.messages`` (the point
of failure), ``buffered``/``in_frame``/``failed`` after each feed, the error
raised again by a failed decoder, and ``_drain`` (what ``parse`` and
``parse_all`` use) over the whole stream.  On top of that, one decoder alone
must decode the same thing however the stream is cut, and every message must
survive ``bytes(msg)`` -> decode unchanged.

Input layout (``seed()`` writes it):

====  =====================================================================
byte  meaning
====  =====================================================================
0     max_payload: 0 default (1 MiB), 1-200 -> 0-199, 201-255 -> (n-200) KiB
1     max_header: 0 default (4096), else 7 + n (8-262)
2     max_args: 0 default (64), else n - 1
3     bits 0-1 buffer type fed (bytes, bytearray, memoryview, slice of a
      larger memoryview); bit 2: change max_payload before chunk byte4 % k
      to the value coded by byte 5 (as byte 0)
4-5   only with bit 2 of byte 3
...   chunking: count (low 4 bits), then that many chunk sizes (0-255)
rest  the stream
====  =====================================================================
"""

from __future__ import annotations

import sys

import common
from common import Finding, Reader, check, item_key

common.instrumented_imports(["eurechat.fallback", "eurechat.rules", "eurechat.message",
                             "eurechat.errors"])

from eurechat.errors import ProtocolError  # noqa: E402
from eurechat.message import Message  # noqa: E402
from eurechat.rules import MAX_ARGS, MAX_HEADER, MAX_PAYLOAD  # noqa: E402

PURE, COMPILED = common.decoders()


def payload_limit(code: int) -> int:
    if code == 0:
        return MAX_PAYLOAD
    if code <= 200:
        return code - 1
    return (code - 200) * 1024


def seed(stream: bytes, cuts=(), max_payload: int = 0, max_header: int = 0,
         max_args: int = 0) -> bytes:
    """An input for this target: ``stream`` with default limits (codes as above)."""
    return bytes([max_payload, max_header, max_args, 0]) + common.cuts_prefix(cuts) + stream


def as_buffer(chunk: bytes, kind: int):
    if kind == 1:
        return bytearray(chunk)
    if kind == 2:
        return memoryview(chunk)
    if kind == 3:
        return memoryview(b"\x00" + chunk + b"\n")[1:-1]
    return chunk


def trace(decoder_cls, limits: dict, chunks, kind: int, switch) -> list:
    """Everything observable while ``chunks`` are fed, one entry per feed."""
    decoder = decoder_cls(**limits)
    out = []
    for index, chunk in enumerate(chunks):
        if switch is not None and index == switch[0]:
            decoder.max_payload = switch[1]
            out.append(("max_payload", decoder.max_payload))
        try:
            items = decoder.feed(as_buffer(chunk, kind))
        except ProtocolError as exc:
            out.append(("err", exc.__class__.__name__, str(exc),
                        [item_key(i) for i in exc.messages],
                        decoder.buffered, decoder.in_frame, decoder.failed))
            try:
                decoder.feed(b"PING 0\n")
            except ProtocolError as again:
                out.append(("again", again.__class__.__name__, str(again)))
            else:
                out.append(("recovered",))
            return out
        out.append(("ok", [item_key(i) for i in items], decoder.buffered, decoder.in_frame,
                    decoder.failed))
    return out


def drain(decoder_cls, limits: dict, stream: bytes, limit: int) -> tuple:
    """``_drain`` of the whole stream on a fresh decoder (``parse``: 1, ``parse_all``: -1)."""
    decoder = decoder_cls(**limits)
    try:
        items, pos = decoder._drain(stream, limit)
    except ProtocolError as exc:
        return ("err", exc.__class__.__name__, str(exc), [item_key(i) for i in exc.messages])
    return ("ok", [item_key(i) for i in items], pos)


def outcome(entries: list) -> tuple:
    """All items decoded and the error (class, text), whatever the chunking."""
    items: list = []
    for entry in entries:
        if entry[0] == "ok":
            items.extend(entry[1])
        elif entry[0] == "err":
            items.extend(entry[3])
            return items, entry[1:3]
    return items, None


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris calls
    r = Reader(data)
    limits = {"max_payload": payload_limit(r.byte())}
    code = r.byte()
    limits["max_header"] = MAX_HEADER if code == 0 else 7 + code
    code = r.byte()
    limits["max_args"] = MAX_ARGS if code == 0 else code - 1
    flags = r.byte()
    kind = flags & 3
    switch = None
    if flags & 4:
        switch = (r.byte(), payload_limit(r.byte()))
    sizes = common.read_cuts(r)
    stream = r.rest()
    chunks = common.cut(stream, sizes)
    if switch is not None:
        switch = (switch[0] % len(chunks), switch[1])

    pure = trace(PURE, limits, chunks, kind, switch)
    compiled = trace(COMPILED, limits, chunks, kind, switch)
    if pure != compiled:
        for step, (a, b) in enumerate(zip(pure, compiled)):
            if a != b:
                raise Finding(f"decoders differ at feed {step}:\n  pure:     {a!r}\n"
                              f"  compiled: {b!r}")
        raise Finding(f"decoders differ in length: {len(pure)} vs {len(compiled)}")

    for limit in (1, -1):
        a, b = drain(PURE, limits, stream, limit), drain(COMPILED, limits, stream, limit)
        check(a == b, f"_drain(limit={limit}) differs:\n  pure:     {a!r}\n  compiled: {b!r}")

    if switch is None:
        whole = outcome(trace(PURE, limits, [stream], 0, None))
        check(outcome(pure) == whole,
              f"chunking changed the outcome:\n  cut:   {outcome(pure)!r}\n  whole: {whole!r}")

    for entry in pure:
        if entry[0] != "ok":
            continue
        for name, fields in entry[1]:
            if name != "Message":
                continue
            msg = Message(*fields)
            again = PURE(max_payload=1 << 40).feed(bytes(msg))
            check([item_key(i) for i in again] == [(name, fields)],
                  f"{msg!r} does not survive encode/decode: {again!r}")


if __name__ == "__main__":
    common.main(TestOneInput, sys.argv)
