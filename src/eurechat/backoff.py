"""How long to wait before trying again: one exponential backoff for every retry
loop of eurechat (the peer's directory link and routes, the directory's
worker restarts, its presence feeds and its account database).

The delay for the ``attempt``-th retry (counted from 0) is
``min(cap, base * 2**attempt)``.  With ``jitter`` ``j`` (0 to 1) it is drawn
from ``(1 - j) * d`` to ``d`` instead: many clients that lost the same
server at the same moment (a directory restart) then do not all come back
in the same instant.  Loops that are alone in retrying (a supervisor, one
process's feed) use no jitter, so their pace is predictable in logs.

``delay`` is the pure function; ``Backoff`` keeps the count for a loop that
retries one thing: ``next()`` after each failure, ``reset()`` after a
success.
"""

from __future__ import annotations

import random
from typing import Callable

__all__ = ["delay", "jittered_delay", "Backoff", "RECONNECT_JITTER"]

#: The jitter of reconnections that many clients make at once.
RECONNECT_JITTER = 0.5

#: Exponents beyond this add nothing but a huge float (2**30 times any base
#: above a nanosecond is past every cap in use).
_MAX_EXPONENT = 30


def delay(attempt: int, base: float, cap: float, *, jitter: float = 0.0,
          rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first).

    ``min(cap, base * 2**attempt)``, times a factor drawn from
    ``(1 - jitter, 1]`` when ``jitter`` > 0 (``rng`` returns a float in
    ``[0, 1)``; pass one to make the draw reproducible)."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError("jitter must be within 0..1")
    d = min(cap, base * (2 ** min(attempt, _MAX_EXPONENT)))
    if jitter:
        d *= 1.0 - jitter * rng()
    return d


def jittered_delay(attempt: int, base: float, cap: float) -> float:
    """``delay`` with ``RECONNECT_JITTER``: for a client reconnecting to a
    server that its many peers lost at the same moment."""
    return delay(attempt, base, cap, jitter=RECONNECT_JITTER)


class Backoff:
    """The backoff of one retry loop: ``next()`` returns the delay before the
    next attempt and counts a failure; ``reset()`` after a success starts over
    at ``base``."""

    __slots__ = ("base", "cap", "jitter", "failures", "_rng")

    def __init__(self, base: float, cap: float, *, jitter: float = 0.0,
                 rng: Callable[[], float] = random.random) -> None:
        if not 0 <= base <= cap:
            raise ValueError("need 0 <= base <= cap")
        delay(0, base, cap, jitter=jitter)  # validates jitter
        self.base, self.cap, self.jitter = base, cap, jitter
        self.failures = 0
        self._rng = rng

    def next(self) -> float:
        """The delay before the next attempt (``base`` after the first
        failure, doubling up to ``cap``); counts one failure."""
        d = delay(self.failures, self.base, self.cap, jitter=self.jitter, rng=self._rng)
        self.failures += 1
        return d

    def reset(self) -> None:
        """A success: the next failure waits ``base`` again."""
        self.failures = 0

    def __repr__(self) -> str:
        return (f"Backoff(base={self.base!r}, cap={self.cap!r}, jitter={self.jitter!r}, "
                f"failures={self.failures})")
