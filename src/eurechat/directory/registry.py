"""The local read view of presence, and the in-process registry built on it.

Every registry backend answers ``query`` from a ``LocalView`` in the worker's
own memory: QUERY is the hot path and must never wait for another process or
host.  Backends differ only in how the view is kept current (directly, from a
``multiprocessing.Manager`` change feed, from Redis pub/sub).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from .interfaces import Registration, Registry

__all__ = ["LocalView", "MemoryRegistry"]


class LocalView:
    """name -> Registration, with the sorted list cached between changes."""

    __slots__ = ("_by_name", "_sorted", "seq")

    def __init__(self) -> None:
        self._by_name: Dict[str, Tuple[Registration]] = {}
        self._sorted: Optional[List[Registration]] = None
        self.seq = 0  # last change applied (backends with a feed use it)

    def put(self, reg: Registration) -> None:
        self._by_name[reg.name] = (reg,)
        self._sorted = None

    def discard(self, name: str, expected: Optional[Registration] = None) -> bool:
        cur = self._by_name.get(name)
        if cur is None or (expected is not None and cur[0] != expected):
            return False
        del self._by_name[name]
        self._sorted = None
        return True

    def reset(self, regs: Sequence[Registration]) -> None:
        self._by_name = {r.name: (r,) for r in regs}
        self._sorted = None

    def get(self, name: str) -> Optional[Registration]:
        cur = self._by_name.get(name)
        return cur[0] if cur else None

    def query(self, name: Optional[str] = None,
              limit: Optional[int] = None) -> Sequence[Registration]:
        if name is not None:
            return self._by_name.get(name, ())
        regs = self._sorted
        if regs is None:
            regs = self._sorted = sorted(r[0] for r in self._by_name.values())
        return regs if limit is None else regs[:limit]

    def all(self) -> List[Registration]:
        return list(self.query())

    def __len__(self) -> int:
        return len(self._by_name)


class MemoryRegistry(Registry):
    """Presence in this process only (``--workers 1``): the view is the truth."""

    def __init__(self) -> None:
        self.view = LocalView()
        self.query = self.view.query  # type: ignore[method-assign]  # hot path: no hop

    async def bind(self, registration: Registration) -> None:
        self.view.put(registration)

    async def remove(self, name: str, expected: Optional[Registration] = None) -> bool:
        return self.view.discard(name, expected)

    def query(self, name: Optional[str] = None,
              limit: Optional[int] = None) -> Sequence[Registration]:
        return self.view.query(name, limit)

    async def snapshot(self) -> List[Registration]:
        return self.view.all()
