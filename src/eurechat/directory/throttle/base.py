"""The throttle seam (SPEC §2): after ``limit`` failed logins within ``window``
seconds for one key (a user name or a source address), that key is refused
for ``window`` seconds.

One semantics for every backend, the sliding window:

* a failure counts while it is less than ``window`` seconds old;
* the failure that makes ``limit`` counted ones blocks the key until
  ``window`` seconds later, and the count starts again from zero;
* ``blocked(keys)`` is true while any of ``keys`` is blocked.

So ``limit`` failures spread over any ``window`` seconds block, wherever a
fixed window would have started; and a key is never blocked by failures
older than ``window``.  ``count_failure`` is that rule as a pure function,
used by the memory and SQLite backends; the Redis backend runs the same rule
in a Lua script, on Redis's clock.
"""

from __future__ import annotations

import abc
from typing import Optional, Sequence, Tuple

from ..errors import ThrottleUnavailable

__all__ = ["Throttle", "ThrottleUnavailable", "count_failure"]


def count_failure(hits: Sequence[float], now: float, limit: int,
                  window: float) -> Tuple[Tuple[float, ...], Optional[float]]:
    """One more failure of a key at ``now``, given the times of its earlier
    counted failures: ``(failures still counted, None)``, or ``((), until)``
    when this one reaches ``limit`` and blocks the key until ``until``."""
    recent = [t for t in hits if now - t < window]
    recent.append(now)
    if len(recent) >= limit:
        return (), now + window
    return tuple(recent), None


class Throttle(abc.ABC):
    """Failed-login throttling (module doc), shared by all workers (and all
    hosts with Redis).  Failures raise ``ThrottleUnavailable`` when the
    counters cannot be reached."""

    def __init__(self, limit: int = 5, window: float = 60.0) -> None:
        if limit < 1 or not window > 0:
            raise ValueError("throttle needs limit >= 1 and window > 0")
        self.limit = limit
        self.window = window

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
