"""``Registration``: one published listening address, as the directory stores it
and as a peer reads it back from ``QUERY``."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Registration"]


class Registration(NamedTuple):
    """``name,address,port`` on the wire: who listens where.

    A tuple, so it is immutable and hashable (the directory caches reply
    frames by registration) and compares equal to ``(name, address, port)``."""

    name: str
    address: str
    port: int

    def line(self) -> str:
        """The ``QUERY`` result line: ``name,address,port``."""
        return f"{self.name},{self.address},{self.port}"

    def as_dict(self) -> dict:
        """For JSON output (the peer's ``--json`` events)."""
        return {"name": self.name, "address": self.address, "port": self.port}
