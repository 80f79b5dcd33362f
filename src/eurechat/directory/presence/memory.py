"""Presence in this process only (``--registry memory``, one worker): the read
view is the source of truth."""

from __future__ import annotations

from typing import List, Optional, Sequence

from .base import Registration, Registry
from .view import ReadView

__all__ = ["MemoryRegistry"]


class MemoryRegistry(Registry):
    """``Registry`` whose writes go straight into its own ``ReadView``."""

    def __init__(self) -> None:
        self.view = ReadView()
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
