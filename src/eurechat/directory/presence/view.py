"""The read view of presence: every registry answers ``query`` from one.

QUERY is the hot path and must never wait for another process or host, so
each process keeps presence in its own memory and the backends differ only
in how they keep this view current (directly, from the Manager's change
feed, from Redis's change log).

The view keeps the names sorted and applies each change in O(log n) plus a
memmove: a directory of a million registrations under constant churn never
re-sorts.  ``QUERY 0`` gets the sorted list itself, no copy; a list once
handed out is never changed afterwards (the next change copies it first),
so a caller may cache what it builds from it by identity.  ``QUERY name``
gets a one-element tuple kept per name: no allocation per request.
"""

from __future__ import annotations

import bisect
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ...registration import Registration

__all__ = ["ReadView"]


class ReadView:
    """name -> Registration, sorted by name, with copy-on-write lending."""

    __slots__ = ("_by_name", "_names", "_sorted", "_lent", "seq", "version", "on_change")

    def __init__(self, on_change: Optional[Callable[[], None]] = None) -> None:
        self._by_name: Dict[str, Tuple[Registration]] = {}
        self._names: List[str] = []
        self._sorted: List[Registration] = []   # parallel to _names
        self._lent = False                       # _sorted was handed out
        #: last change applied, for backends that follow a numbered change log
        self.seq = 0
        #: bumped on every change (for tools and tests that wait for one)
        self.version = 0
        self.on_change = on_change

    def _changed(self) -> None:
        self.version += 1
        if self.on_change is not None:
            self.on_change()

    def _own(self) -> List[Registration]:
        if self._lent:
            self._sorted = list(self._sorted)
            self._lent = False
        return self._sorted

    def put(self, reg: Registration) -> None:
        """Add or replace ``reg.name``'s registration."""
        name = reg.name
        regs = self._own()
        names = self._names
        i = bisect.bisect_left(names, name)
        if i < len(names) and names[i] == name:
            regs[i] = reg
        else:
            names.insert(i, name)
            regs.insert(i, reg)
        self._by_name[name] = (reg,)
        self._changed()

    def discard(self, name: str, expected: Optional[Registration] = None) -> bool:
        """Drop ``name`` (only if it is ``expected``, when given); whether it was there."""
        cur = self._by_name.get(name)
        if cur is None or (expected is not None and cur[0] != expected):
            return False
        del self._by_name[name]
        regs = self._own()
        i = bisect.bisect_left(self._names, name)
        del self._names[i]
        del regs[i]
        self._changed()
        return True

    def reset(self, regs: Sequence[Registration]) -> None:
        """Replace everything (a snapshot); the last of a name wins."""
        fresh = {r.name: r for r in regs}
        self._names = sorted(fresh)
        self._sorted = [fresh[n] for n in self._names]
        self._by_name = {n: (r,) for n, r in fresh.items()}
        self._lent = False
        self._changed()

    def get(self, name: str) -> Optional[Registration]:
        cur = self._by_name.get(name)
        return cur[0] if cur else None

    def query(self, name: Optional[str] = None,
              limit: Optional[int] = None) -> Sequence[Registration]:
        if name is not None:
            return self._by_name.get(name, ())
        if limit is not None and limit < len(self._sorted):
            return self._sorted[:limit]
        self._lent = True
        return self._sorted

    def all(self) -> List[Registration]:
        """A copy of every registration, sorted by name."""
        return list(self._sorted)

    def __len__(self) -> int:
        return len(self._names)
