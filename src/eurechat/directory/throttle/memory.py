"""Failed-login throttling in one process (tests; ``--throttle memory``)."""

from __future__ import annotations

import time
from typing import Callable, Dict, Sequence, Tuple

from .base import Throttle, count_failure

__all__ = ["MemoryThrottle"]

#: Keys kept before stale ones are forgotten (limits before memory).
MAX_KEYS = 100_000


class MemoryThrottle(Throttle):
    """The sliding window of ``base`` in dictionaries of this process."""

    def __init__(self, limit: int = 5, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(limit, window)
        self.clock = clock
        self._hits: Dict[str, Tuple[float, ...]] = {}
        self._until: Dict[str, float] = {}

    async def blocked(self, keys: Sequence[str]) -> bool:
        now = self.clock()
        until = self._until
        return any(until.get(k, 0.0) > now for k in keys)

    async def failure(self, keys: Sequence[str]) -> None:
        now = self.clock()
        for key in keys:
            hits, until = count_failure(self._hits.get(key, ()), now, self.limit, self.window)
            if until is None:
                self._hits[key] = hits
            else:
                self._hits.pop(key, None)
                self._until[key] = until
        if len(self._hits) + len(self._until) > MAX_KEYS:
            self._forget(now)

    def _forget(self, now: float) -> None:
        """Drop keys with no counted failure and no block left."""
        self._hits = {k: h for k, h in self._hits.items() if h and now - h[-1] < self.window}
        self._until = {k: u for k, u in self._until.items() if u > now}
