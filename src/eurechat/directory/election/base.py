"""The election seam: who runs the liveness checker when several directory
hosts share one registry -- exactly one of them should probe each
registration at a time."""

from __future__ import annotations

import abc
from typing import List

from ..presence.base import Registration, Registry

__all__ = ["Election"]


class Election(abc.ABC):
    """The checker asks ``leading()`` before every round, then probes what
    ``snapshot(registry)`` returns.  A lease-based implementation acquires or
    renews its lease in the background and answers from what it holds."""

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Prepare (connect); the default does nothing."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Give up leadership and release connections."""

    @abc.abstractmethod
    async def leading(self) -> bool:
        """Whether this process should run the next checker round."""

    async def snapshot(self, registry: Registry) -> List[Registration]:
        """The registrations this process should probe in the next round: by
        default every one (a single leader probes them all)."""
        return await registry.snapshot()
