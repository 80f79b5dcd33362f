"""The presence seam: ``Registry``, who is bound where.

The protocol core never touches another process or host for presence: it
talks to a ``Registry``.  Reads are the hot path: ``query`` is synchronous
and answered from a read view in this process (``view.ReadView``) that the
backend keeps current, so a QUERY never pays a cross-process or network
round trip.  Writes are rare and ``async``: they go to the source of truth.

The name space is also cut into ``BUCKETS`` buckets by a stable hash
(``bucket_of``, CRC-32) so that liveness checkers on several hosts can
split it into shards (``shard_of``) and each read only its own.
"""

from __future__ import annotations

import abc
import zlib
from typing import Collection, List, Optional, Sequence

from ...registration import Registration
from ..errors import RegistryUnavailable

__all__ = ["Registry", "Registration", "RegistryUnavailable", "BUCKETS", "bucket_of",
           "shard_of"]

#: Buckets of the name space.  Part of the Redis data layout (its index keys)
#: and of the checker's shards: every host must agree on it.
BUCKETS = 1024


def bucket_of(name: str) -> int:
    """CRC-32 of the name, mod ``BUCKETS``: the same in every process and host
    (unlike Python's salted ``hash``)."""
    return zlib.crc32(name.encode("utf-8")) % BUCKETS


def shard_of(name: str, shards: int) -> int:
    """The checker shard of a name: its bucket modulo the number of shards, so
    that a shard is a set of whole buckets."""
    return bucket_of(name) % shards


class Registry(abc.ABC):
    """Presence: the last BIND of each user, shared by every worker and host."""

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Connect and fill the read view; raise RegistryUnavailable if the
        store cannot be reached at all."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release connections and feed subscriptions."""

    @abc.abstractmethod
    async def bind(self, registration: Registration) -> None:
        """Store ``registration``; the last BIND of a user wins."""

    @abc.abstractmethod
    async def remove(self, name: str, expected: Optional[Registration] = None) -> bool:
        """Drop ``name``'s registration.  With ``expected``, only if it is still
        exactly that one (the liveness checker must not remove a fresh BIND
        that raced with its probe).  Returns whether something was removed."""

    @abc.abstractmethod
    def query(self, name: Optional[str] = None,
              limit: Optional[int] = None) -> Sequence[Registration]:
        """Registrations sorted by name (one, or none, when ``name`` is given),
        at most ``limit`` of them; served from the read view.  A sequence
        once returned is never mutated afterwards (views replace it on change),
        so callers may cache what they derive from it by identity."""

    @abc.abstractmethod
    async def snapshot(self) -> List[Registration]:
        """Every registration, read from the source of truth (for the checker)."""

    async def snapshot_shards(self, shards: Collection[int], count: int) -> List[Registration]:
        """The registrations whose ``shard_of(name, count)`` is in ``shards``,
        from the source of truth.  This default filters ``snapshot()``; a store
        that indexes by bucket reads only those buckets."""
        if len(shards) >= count:
            return await self.snapshot()
        return [r for r in await self.snapshot() if shard_of(r.name, count) in shards]

    async def drop_pid(self, pid: int) -> None:  # noqa: B027 (optional hook)
        """The process ``pid`` (a worker) died: a store that waits for its
        readers before acknowledging a write stops waiting for that one.  The
        default has no readers to forget."""
