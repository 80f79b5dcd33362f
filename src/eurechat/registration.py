"""``Registration``: one published listening address, as the directory stores it
and as a peer reads it back from ``QUERY``."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Registration"]


class Registration(NamedTuple):
    """``name,address,port`` on the wire: who listens where.

    A tuple, so it is immutable and hashable (the directory caches reply
    frames by registration).  ``tls``: the directory reaches this listener
    over TLS (BIND check, liveness probe) -- set for registrations made in a
    session that said ``HELLO 0 eurechat/2``, whose peers listen with TLS;
    seed peers and ``nc`` listeners are probed in plaintext.  ``fingerprint``:
    the user's enrolled key when the BIND was checked (empty: none); the
    directory's probes require the listener to prove that key, and
    ``QUERY`` after ``HELLO 0 eurechat/2`` gives it as a fourth field.
    Neither is part of the seed ``QUERY`` line."""

    name: str
    address: str
    port: int
    tls: bool = False
    fingerprint: str = ""

    def line(self) -> str:
        """The ``QUERY`` result line: ``name,address,port``."""
        return f"{self.name},{self.address},{self.port}"

    def as_dict(self) -> dict:
        """For JSON output (the peer's ``--json`` events)."""
        return {"name": self.name, "address": self.address, "port": self.port}
