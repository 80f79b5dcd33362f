"""Leader election with an expiring lease in Redis: exactly one liveness
checker across every directory instance that shares the Redis.

Why a lease: the checker probes every registration; N instances each doing it
would multiply the probes by N and race on removals.  One key in Redis names
the holder and expires by itself, so a holder that dies (crash, partition,
SIGKILL) is replaced without anybody having to notice the death.

Timing, with ``lease`` the period the operator sets:

* the key lives ``0.9 * lease`` after each renewal; the holder renews every
  ``lease / 3``, so it survives two lost renewals;
* the holder considers itself leader only until ``0.8`` of the key's lifetime
  after the *start* of its last successful renewal -- it steps down before
  the key can expire under it, even with a stalled event loop or a slow reply;
* followers try to take the key every ``lease / 10``.

So after the holder dies, another instance leads within
``0.9 * lease + lease / 10 = lease``: within one lease period.  A clean
shutdown releases the key, and the next follower poll takes over.

Safety does not depend on the lease alone: the checker removes a registration
only if it is still exactly the probed one (``Registry.remove(name, expected)``),
so even a stale leader cannot delete a fresh BIND.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import Callable, Optional

from redis import exceptions as redis_errors

from .interfaces import Election
from .redis_registry import redis_client

log = logging.getLogger("eurechat.directory.lease")

__all__ = ["RedisLease"]

_ACQUIRE_OR_RENEW = """
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLease(Election):
    """One elected holder of ``name`` among all instances on one Redis.

    ``holds()`` is cheap and synchronous (a clock comparison): call it before
    every unit of work that only the leader may do (``await leading()`` is the
    same, for the checker's ``Election`` seam).  ``wait_leading()`` waits
    until this instance becomes the leader.
    """

    def __init__(self, url: str, *, name: str = "checker", lease: float = 10.0,
                 prefix: str = "eurechat", holder: Optional[str] = None,
                 on_change: Optional[Callable[[bool], None]] = None) -> None:
        if lease <= 0:
            raise ValueError("lease must be positive")
        self.url = url
        self.key = f"{prefix}:lease:{name}"
        self.lease = lease
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ttl_ms = max(1, int(lease * 900))
        self.renew_every = lease / 3
        self.poll_every = lease / 10
        self.on_change = on_change
        self._deadline = 0.0
        self._leading = False
        self._redis = None
        self._script = None
        self._release = None
        self._task: Optional[asyncio.Task] = None
        self._became_leader: Optional[asyncio.Event] = None

    # -- public --------------------------------------------------------------
    def holds(self) -> bool:
        """Whether this instance holds the lease right now."""
        if self._leading and time.monotonic() >= self._deadline:
            self._set(False, "lease not renewed in time")
        return self._leading

    async def leading(self) -> bool:
        return self.holds()

    async def wait_leading(self, timeout: Optional[float] = None) -> bool:
        """Wait until this instance leads; False on ``timeout``."""
        assert self._became_leader is not None, "start() first"
        while not self.holds():
            self._became_leader.clear()
            try:
                await asyncio.wait_for(self._became_leader.wait(), timeout)
            except asyncio.TimeoutError:
                return self.holds()
        return True

    async def start(self) -> None:
        """Make a first attempt, then keep renewing/acquiring in the background.
        Never fails: with Redis unreachable this instance simply does not lead
        until it is back."""
        self._redis = redis_client(self.url)
        self._script = self._redis.register_script(_ACQUIRE_OR_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._became_leader = asyncio.Event()
        try:
            await self._attempt()
        except (redis_errors.RedisError, OSError) as e:
            log.warning("lease %s: Redis unreachable (%s); not leading for now", self.key, e)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        """Stop, and hand the lease over at once if we hold it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self._redis is not None:
            if self._leading:
                try:
                    await self._release(keys=[self.key], args=[self.holder])
                except (redis_errors.RedisError, OSError):
                    pass
            self._set(False, "shutting down")
            try:
                await self._redis.aclose()
            except Exception:
                pass
            self._redis = None

    # -- internals -------------------------------------------------------------
    def _set(self, leading: bool, why: str) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        if leading:
            log.info("liveness checker lease %s acquired by %s", self.key, self.holder)
            if self._became_leader is not None:
                self._became_leader.set()
        else:
            log.info("liveness checker lease %s given up by %s: %s", self.key, self.holder, why)
        if self.on_change is not None:
            self.on_change(leading)

    async def _attempt(self) -> None:
        started = time.monotonic()
        got = await self._script(keys=[self.key], args=[self.holder, self.ttl_ms])
        if got:
            self._deadline = started + 0.8 * self.ttl_ms / 1000
            self._set(True, "")
        else:
            self._set(False, "held by another instance")

    async def _loop(self) -> None:
        warned = False
        while True:
            await asyncio.sleep(self.renew_every if self._leading else self.poll_every)
            try:
                await self._attempt()
                warned = False
            except asyncio.CancelledError:
                raise
            except (redis_errors.RedisError, OSError) as e:
                # Keep leading only until the deadline already earned.
                self.holds()
                if not warned:
                    log.warning("lease %s: Redis unreachable (%s)", self.key, e)
                    warned = True
