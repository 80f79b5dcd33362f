"""Fuzz target: what a peer reads from its directory (``eurechat.peer.directory_client``).

The replies are decoded with the directory link's payload limit, and every
``RESULT`` goes through ``parse_result``, every ``ERR`` through the "directory
full" check, as the client does.  Invariants: nothing raises but the
documented ``DirectoryUnavailable`` of a full directory; every registration
``parse_result`` hands on has a name and an address without separators and
a port a socket can dial (1-65535): a malformed line is skipped, never
passed to the dialler, where port 70000 would silently become 4464.

Input layout (``seed()`` writes it): the chunking prefix of
``common.read_cuts``, then the stream.
"""

from __future__ import annotations

import sys

import common
from common import Finding, Reader, check

common.instrumented_imports(["eurechat.peer.directory_client", "eurechat.fallback"])

from eurechat.errors import ProtocolError  # noqa: E402
from eurechat.peer import directory_client  # noqa: E402
from eurechat.peer.directory_client import (  # noqa: E402
    DirectoryUnavailable,
    parse_result,
)

PURE, _ = common.decoders()
LIMIT = directory_client.DIRECTORY_MAX_PAYLOAD


def seed(stream: bytes, cuts=()) -> bytes:
    return common.cuts_prefix(cuts) + stream


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris calls
    r = Reader(data)
    sizes = common.read_cuts(r)
    chunks = common.cut(r.rest(), sizes)
    decoder = PURE(max_payload=LIMIT)
    for chunk in chunks:
        try:
            items = decoder.feed(chunk)
        except ProtocolError:
            return  # the client logs it and reconnects
        for item in items:
            if item.__class__.__name__ == "Oversized":
                continue
            if item.type == "ERR":
                try:
                    directory_client._check_full(item)
                except DirectoryUnavailable:
                    pass
            elif item.type == "RESULT":
                try:
                    regs = parse_result(item.payload)
                except Exception as exc:
                    raise Finding(f"parse_result raised {exc.__class__.__name__}: {exc} "
                                  f"on {item.payload[:200]!r}") from exc
                for reg in regs:
                    check(reg.name and reg.address, f"empty field in {reg!r}")
                    check(not set(",\n") & set(reg.name + reg.address), f"separator in {reg!r}")
                    check(isinstance(reg.port, int) and 1 <= reg.port <= 65535,
                          f"undialable port in {reg!r} from {item.payload[:200]!r}")


if __name__ == "__main__":
    common.main(TestOneInput, sys.argv)
