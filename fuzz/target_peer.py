"""Fuzz target: one peer-to-peer connection (``eurechat.peer.protocol.PeerProtocol``).

Bytes from a remote peer, cut at fuzzer-chosen points, go to two protocol
objects, one on each framing implementation; they must produce the same
events.  Invariants checked after every ``receive``:

* nothing raises; every event is one of the documented kinds;
* a connection speaks for one sender: once ``remote`` is set it never
  changes, and every ``MessageReceived`` names it (a valid user name);
* a fatal ``Violation`` is the last event ever: ``closed_reason`` is set
  exactly then, and every later ``receive`` returns nothing;
* every reply the caller is told to send is one well-formed ``ERR`` frame.

Input layout (``seed()`` writes it): byte 0 bit 0 pins the connection to
``bob`` (we dialled him), bits 1-2 pick ``max_payload`` (1 MiB, 0, 10, 100);
then the chunking prefix of ``common.read_cuts``; the rest is the stream.
"""

from __future__ import annotations

import sys

import common
from common import Finding, Reader, check

common.instrumented_imports(["eurechat.peer.protocol", "eurechat.fallback",
                             "eurechat.rules", "eurechat.message"])

from eurechat.peer.protocol import (  # noqa: E402
    PEER_MAX_PAYLOAD,
    AckReceived,
    ErrReceived,
    MessageReceived,
    PeerProtocol,
    PingReceived,
    PongReceived,
    Violation,
    valid_name,
)

PURE, COMPILED = common.decoders()
LIMITS = [PEER_MAX_PAYLOAD, 0, 10, 100]
EVENTS = (MessageReceived, AckReceived, PingReceived, PongReceived, ErrReceived, Violation)


def seed(stream: bytes, cuts=(), flags: int = 0) -> bytes:
    """An input for this target: ``stream`` from an unidentified peer, 1 MiB limit."""
    return bytes([flags]) + common.cuts_prefix(cuts) + stream


class Driven:
    def __init__(self, decoder_cls, remote, max_payload: int) -> None:
        self.p = PeerProtocol(remote, max_payload=max_payload)
        self.p.decoder = decoder_cls(max_payload=max_payload)
        self.fatal = False

    def receive(self, chunk: bytes) -> list:
        p = self.p
        remote = p.remote
        events = p.receive(chunk)
        if self.fatal:
            check(events == [], f"events after a fatal violation: {events!r}")
            return events
        for index, event in enumerate(events):
            check(isinstance(event, EVENTS), f"unknown event {event!r}")
            if isinstance(event, MessageReceived):
                check(valid_name(event.sender), f"message from invalid name {event.sender!r}")
                check(remote is None or event.sender == remote,
                      f"{remote!r}'s connection delivered a message from {event.sender!r}")
                remote = event.sender
            elif isinstance(event, Violation):
                if event.reply:
                    items = common.frames(event.reply)
                    check(len(items) == 1 and items[0].type == "ERR",
                          f"violation reply is not one ERR: {event.reply!r}")
                if event.fatal:
                    check(index == len(events) - 1, "events after a fatal violation")
                    self.fatal = True
        check(p.remote == remote, f"remote changed from {remote!r} to {p.remote!r}")
        check((p.closed_reason is not None) == self.fatal,
              f"closed_reason {p.closed_reason!r} but fatal={self.fatal}")
        return events


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris calls
    r = Reader(data)
    flags = r.byte()
    remote = "bob" if flags & 1 else None
    max_payload = LIMITS[(flags >> 1) & 3]
    sizes = common.read_cuts(r)
    chunks = common.cut(r.rest(), sizes)
    pure = Driven(PURE, remote, max_payload)
    compiled = Driven(COMPILED, remote, max_payload)
    for index, chunk in enumerate(chunks):
        a = pure.receive(chunk)
        b = compiled.receive(chunk)
        if a != b:
            raise Finding(f"chunk {index}: the framing twins make the peer protocol differ:\n"
                          f"  pure:     {a!r}\n  compiled: {b!r}")


if __name__ == "__main__":
    common.main(TestOneInput, sys.argv)
