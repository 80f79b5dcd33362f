"""What every fuzz target shares: reading the fuzzer's bytes, the two framing
implementations, and the checks every target applies to what goes on the wire.

A target's input is a few control bytes (limits, where to cut the stream,
which outcome an effect gets) followed by the bytes a network peer would
send.  The layout is fixed and documented per target so that seeds can be
written from the test suite's examples (``seeds.py``) and a crash file can be
read by a person.

Why the compiled module is imported directly: the targets compare the twins,
so both must be there even under ``EURECHAT_PUREPYTHON=1``.  A missing
extension is a broken build here, not a reason to fuzz only one side.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))


class Finding(AssertionError):
    """A broken invariant: the fuzzer reports it as a crash with this text."""


def check(condition: bool, what: str) -> None:
    """Raise ``Finding(what)`` unless ``condition``: kept when Python runs with -O."""
    if not condition:
        raise Finding(what)


class Reader:
    """Consumes the fuzzer's bytes from the front; past the end every read is 0/empty,
    so any input, however short, is a complete program for the target."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        b = self.data[self.pos]
        self.pos += 1
        return b

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def decoders() -> Tuple[type, type]:
    """``(pure Decoder, compiled Decoder)``."""
    from eurechat import fallback
    compiled = importlib.import_module("eurechat._framing")
    return fallback.Decoder, compiled.Decoder


def cut(stream: bytes, sizes: Sequence[int]) -> List[bytes]:
    """``stream`` split into chunks of the given sizes, then the rest (always last,
    possibly empty: an empty ``feed`` is something a transport can do)."""
    chunks = []
    pos = 0
    for size in sizes:
        chunks.append(stream[pos:pos + size])
        pos += size
    chunks.append(stream[pos:])
    return chunks


def read_cuts(r: Reader) -> List[int]:
    """The chunking prefix shared by the stream targets: a count (0-15) then that
    many chunk sizes (0-255 bytes each)."""
    count = r.byte() & 15
    return [r.byte() for _ in range(count)]


def cuts_prefix(sizes: Sequence[int] = ()) -> bytes:
    """The bytes ``read_cuts`` reads back as ``sizes`` (for seeds)."""
    sizes = list(sizes)[:15]
    return bytes([len(sizes)] + [min(s, 255) for s in sizes])


def item_key(item) -> tuple:
    """An item as (class name, fields): equal keys mean identical items."""
    return (item.__class__.__name__, tuple(item))


def frames(data: bytes) -> list:
    """Split what a server wrote into frames, failing the target when it is not
    whole, well-formed framing: nothing eurechat sends may break SPEC section 1."""
    from eurechat import fallback
    from eurechat.errors import ProtocolError
    decoder = fallback.Decoder(max_payload=1 << 40)
    try:
        items = decoder.feed(data)
    except ProtocolError as exc:
        raise Finding(f"wrote malformed framing ({exc}): {data[:200]!r}")
    check(decoder.buffered == 0 and not decoder.in_frame,
          f"wrote a partial frame: {data[-200:]!r}")
    return items


def instrumented_imports(modules: Sequence[str], include: Sequence[str] = ("eurechat",)) -> None:
    """Import ``modules`` with atheris' Python coverage when atheris drives us
    (of the packages in ``include``: a standard module the target leans on,
    like ``ipaddress``, can be added when it is not imported yet)."""
    atheris = _atheris()
    if atheris is None:
        for name in modules:
            importlib.import_module(name)
        return
    with atheris.instrument_imports(include=list(include)):
        for name in modules:
            importlib.import_module(name)


def _atheris():
    if os.environ.get("EURECHAT_FUZZ_ENGINE") == "replay":
        return None
    try:
        import atheris
    except ImportError:
        return None
    return atheris


def main(test_one_input: Callable[[bytes], None], argv: Optional[List[str]] = None) -> None:
    """Run one target: under atheris (libFuzzer arguments in ``argv``), or, with
    ``EURECHAT_FUZZ_ENGINE=replay``, replay the files and directories given."""
    argv = list(sys.argv if argv is None else argv)
    atheris = _atheris()
    if atheris is None:
        replay(test_one_input, [a for a in argv[1:] if not a.startswith("-")])
        return
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


def replay(test_one_input: Callable[[bytes], None], paths: Sequence[str]) -> None:
    """Run every file under ``paths`` once (regression runs, or no atheris)."""
    count = 0
    for path in paths:
        files = [path] if os.path.isfile(path) else sorted(
            os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
        for name in files:
            with open(name, "rb") as f:
                data = f.read()
            try:
                test_one_input(data)
            except BaseException:
                sys.stderr.write(f"crash on {name}\n")
                raise
            count += 1
    sys.stderr.write(f"replayed {count} inputs\n")
