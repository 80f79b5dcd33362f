"""The two storage seams of the directory: presence and accounts.

The protocol core never touches a database or another process directly; it
talks to a ``Registry`` (who is bound where) and an ``AccountStore`` (who may
log in).  Each has an embedded backend (in-process / ``multiprocessing.Manager``
for presence, SQLite for accounts) and a distributed one (Redis, PostgreSQL),
all interchangeable behind these classes.

Reads are the hot path: ``Registry.query`` is synchronous and answered from a
local read view that the backend keeps current from its change feed, so a
QUERY never pays a cross-process or network round trip.  Writes are rare and
``async``: they go to the shared source of truth.
"""

from __future__ import annotations

import abc
from typing import List, Optional, Sequence

from ..registration import Registration

__all__ = ["Registration", "RegistryUnavailable", "Registry", "AccountExists",
           "AccountsUnavailable", "AccountStore", "Throttle", "Election"]


class RegistryUnavailable(Exception):
    """The shared presence store cannot be reached right now (retry later)."""


class Registry(abc.ABC):
    """Presence: the last BIND of each user, shared by every worker and host."""

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Connect and fill the local read view; raise RegistryUnavailable if the
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
        at most ``limit`` of them; served from the local read view.  A sequence
        once returned is never mutated afterwards (views replace it on change),
        so callers may cache what they derive from it by identity."""

    @abc.abstractmethod
    async def snapshot(self) -> List[Registration]:
        """Every registration, read from the source of truth (for the checker)."""


class AccountExists(Exception):
    """REGISTER of a name that is taken."""


class AccountsUnavailable(Exception):
    """The account database cannot be reached right now (retry later)."""


class AccountStore(abc.ABC):
    """Accounts: names and salted memory-hard password hashes.

    Hashing is CPU-heavy by design; implementations run it off the event loop
    and compare in constant time, and ``verify`` of an unknown user costs the
    same as of a known one (a dummy hash), so neither the reply nor its timing
    tells an attacker which names exist.
    """

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Open/create the store; raise AccountsUnavailable if it cannot."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release connections."""

    @abc.abstractmethod
    async def create(self, name: str, password: bytes) -> None:
        """Create an account; raise AccountExists or ValueError (invalid name/password)."""

    @abc.abstractmethod
    async def verify(self, name: str, password: bytes) -> bool:
        """True when ``name`` exists and ``password`` matches."""

    @abc.abstractmethod
    async def delete(self, name: str) -> bool:
        """Remove an account; whether it existed."""

    @abc.abstractmethod
    async def names(self) -> List[str]:
        """All account names, sorted."""


class Throttle(abc.ABC):
    """Failed-login throttling: after ``limit`` failures within ``window`` seconds
    for one key (a user name or a source address), that key is refused for
    ``window`` seconds.  Shared by all workers (and all hosts with Redis)."""

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Open/connect; the default does nothing."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release connections; the default does nothing."""

    @abc.abstractmethod
    async def blocked(self, keys: Sequence[str]) -> bool:
        """Whether any of ``keys`` is currently refused."""

    @abc.abstractmethod
    async def failure(self, keys: Sequence[str]) -> None:
        """Count one failed attempt against each key."""


class Election(abc.ABC):
    """Who runs the liveness checker when several directory hosts share one
    registry: exactly one of them should probe at a time.  The checker asks
    ``leading()`` before every round; a lease-based implementation acquires or
    renews its lease there and answers whether it holds it."""

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Prepare (connect); the default does nothing."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Give up leadership and release connections."""

    @abc.abstractmethod
    async def leading(self) -> bool:
        """Whether this process should run the next checker round."""
