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

Sharded leases (``ShardedLease``, ``--checker-shards S`` with S > 1): one
checker cannot probe a million registrations every 30 s, so the name space is
cut into S shards (``shard_of``: the name's index bucket -- CRC-32 mod 1024,
stable across processes, hosts and Python versions -- mod S) and each shard
has its own lease key.  A round reads only its shards' index buckets from
Redis (``snapshot``), so the Redis work of a round is spread like the probes.
Every instance takes at most its fair share, ``ceil(S / live instances)``,
and probes only the registrations of the shards it holds.  The live
instances are a sorted set of holders scored by their expiry on Redis's
clock; one Lua script per tick renews the instance's membership and shards,
hands back shards beyond its share (a newcomer gets its part at its next
tick) and takes free ones up to its share, atomically, in one round trip and
O(S) work.  The timing is the single lease's: keys and membership live
``0.9 * lease`` after a tick, ticks come every ``lease / 10``, and the
instance trusts its shards until ``0.8`` of the key's lifetime after the
start of its last successful tick.  A dead instance's shards and membership
therefore expire within ``0.9 * lease`` and the survivors, now counting one
instance fewer, take them at their next tick: within one lease period.
Removal stays by value, so a shard briefly probed by two instances (a stalled
old holder) can never lose a fresh BIND.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
import zlib
from typing import Callable, FrozenSet, Iterable, List, Optional, TypeVar

from redis import exceptions as redis_errors

from ..presence.base import BUCKETS, Registration, Registry, shard_of
from ..redis_client import redis_client
from ..tasks import stop_task
from .base import Election

log = logging.getLogger("eurechat.directory.lease")

__all__ = ["RedisLease", "ShardedLease", "shard_of", "fair_share"]

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
        self._closing = False
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
        """Stop, and hand the lease over at once if we hold it.  (The loop also
        checks a flag and the cancellation is repeated: redis-py can swallow
        one that lands while a command completes, see ``stop_task``.)"""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            await stop_task(task, 2.0)
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
        while not self._closing:
            await asyncio.sleep(self.renew_every if self._leading else self.poll_every)
            if self._closing:
                return
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


# -- sharded checker leases --------------------------------------------------

R = TypeVar("R", bound=Registration)


def fair_share(shards: int, instances: int) -> int:
    """Most shards one of ``instances`` live instances may hold: enough that
    together they cover every shard, no more, so the probes spread out."""
    return -(-shards // max(1, instances))


# KEYS[1]: the member set; KEYS[2..S+1]: the shard lease keys.
# ARGV: holder, ttl in ms, index (0-based) where to start looking for free
# shards (spreads concurrent newcomers), 1 to stay a member / 0 to leave.
# Returns {live instances, share, held shard indices...}.
_SHARDS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local holder, ttl = ARGV[1], tonumber(ARGV[2])
local n = #KEYS - 1
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[1], now + ttl, holder)
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  redis.call('ZREM', KEYS[1], holder)
end
local members = redis.call('ZCARD', KEYS[1])
local share = 0
if ARGV[4] == '1' then share = math.ceil(n / math.max(members, 1)) end
local out = {members, share}
local free = {}
for i = 1, n do
  local key = KEYS[i + 1]
  local cur = redis.call('GET', key)
  if cur == holder then
    if #out - 2 < share then
      redis.call('PEXPIRE', key, ttl)
      out[#out + 1] = i - 1
    else
      redis.call('DEL', key)
    end
  elseif not cur then
    free[#free + 1] = i
  end
end
local start = tonumber(ARGV[3]) % n
local order = {}
for _, i in ipairs(free) do
  if i - 1 >= start then order[#order + 1] = i end
end
for _, i in ipairs(free) do
  if i - 1 < start then order[#order + 1] = i end
end
for _, i in ipairs(order) do
  if #out - 2 >= share then break end
  redis.call('SET', KEYS[i + 1], holder, 'PX', ttl)
  out[#out + 1] = i - 1
end
return out
"""


class ShardedLease(Election):
    """This instance's fair share of ``shards`` checker leases (module doc).

    ``snapshot(registry)`` reads the registrations of the shards held right
    now (the checker calls it at the start of each round instead of the
    registry's whole snapshot); ``leading()`` says whether any shard is held
    at all.  Holding is cheap and synchronous to ask (``held()``, a clock
    comparison)."""

    def __init__(self, url: str, *, shards: int, name: str = "checker", lease: float = 10.0,
                 prefix: str = "eurechat", holder: Optional[str] = None,
                 on_change: Optional[Callable[[FrozenSet[int]], None]] = None) -> None:
        if lease <= 0:
            raise ValueError("lease must be positive")
        if not 1 <= shards <= BUCKETS:
            raise ValueError(f"shards must be 1..{BUCKETS}")
        self.url = url
        self.shards = shards
        # The shard count is part of the key names: instances configured with
        # different counts form separate groups that each cover every name
        # (twice the probes, never a gap) instead of misreading each other.
        base = f"{prefix}:lease:{name}:{shards}"
        self.members_key = f"{base}:members"
        self.keys = [f"{base}:{i}" for i in range(shards)]
        self.lease = lease
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ttl_ms = max(1, int(lease * 900))
        self.tick_every = lease / 10
        # Where this instance starts looking for free shards: instances that
        # start together then mostly ask for different ones.
        self._start = zlib.crc32(self.holder.encode()) % shards
        self.on_change = on_change
        self.instances = 0       # live instances at the last tick
        self.share = 0           # fair share at the last tick
        self.ticks = 0
        self._held: FrozenSet[int] = frozenset()
        self._deadline = 0.0
        self._redis = None
        self._script = None
        self._task: Optional[asyncio.Task] = None
        self._closing = False
        self._changed: Optional[asyncio.Event] = None

    # -- public --------------------------------------------------------------
    def held(self) -> FrozenSet[int]:
        """The shards this instance holds right now."""
        if self._held and time.monotonic() >= self._deadline:
            self._update(frozenset(), "leases not renewed in time")
        return self._held

    def owns(self, name: str) -> bool:
        return shard_of(name, self.shards) in self.held()

    def select(self, regs: Iterable[R]) -> List[R]:
        """The registrations of the shards held now (all others are another
        instance's to probe)."""
        held = self.held()
        if len(held) == self.shards:
            return list(regs)
        n = self.shards
        crc = zlib.crc32
        return [r for r in regs if crc(r.name.encode("utf-8")) % BUCKETS % n in held]

    async def snapshot(self, registry: Registry) -> List[Registration]:
        """This round's registrations to probe: those of the shards held now,
        through ``Registry.snapshot_shards`` (Redis reads them from its index
        buckets: even all of them, as a lone instance does, is cheaper than a
        sorted scan of the hash, for Redis and for us)."""
        held = self.held()
        if not held:
            return []
        return await registry.snapshot_shards(held, self.shards)

    async def leading(self) -> bool:
        return bool(self.held())

    async def wait_for(self, check: Callable[[FrozenSet[int]], bool],
                       timeout: Optional[float] = None) -> bool:
        """Wait until ``check(held shards)`` holds after a tick; False on timeout."""
        assert self._changed is not None, "start() first"
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not check(self.held()):
            self._changed.clear()
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                return check(self.held())
        return True

    async def next_tick(self, timeout: Optional[float] = None) -> bool:
        """Wait for the next tick (renewed, or failed to reach Redis): an event
        for tests and tools to re-check the assignment on; False on timeout."""
        assert self._changed is not None, "start() first"
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def start(self) -> None:
        """A first tick, then one every ``lease / 10`` in the background.
        Never fails: with Redis unreachable this instance holds nothing until
        it is back."""
        self._redis = redis_client(self.url)
        self._script = self._redis.register_script(_SHARDS)
        self._changed = asyncio.Event()
        try:
            await self.tick()
        except (redis_errors.RedisError, OSError) as e:
            log.warning("checker shards: Redis unreachable (%s); holding none for now", e)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        """Stop, leave the member set and hand every held shard over at once."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            # redis-py can swallow a cancellation that lands while it reads a
            # reply; the flag then ends the loop, the cancellation is repeated,
            # and shutdown never waits longer than this.
            await stop_task(task, 2.0)
        if self._redis is not None:
            try:
                await self._run(stay=False)
            except (redis_errors.RedisError, OSError):
                pass
            self._update(frozenset(), "shutting down")
            try:
                await self._redis.aclose()
            except Exception:
                pass
            self._redis = None

    async def tick(self) -> FrozenSet[int]:
        """One renewal/acquisition round trip; returns the shards now held."""
        started = time.monotonic()
        held = await self._run(stay=True)
        self._deadline = started + 0.8 * self.ttl_ms / 1000
        self.ticks += 1
        self._update(held, "")
        if self._changed is not None:
            self._changed.set()
        return self._held

    # -- internals -------------------------------------------------------------
    async def _run(self, stay: bool) -> FrozenSet[int]:
        assert self._script is not None
        reply = await self._script(keys=[self.members_key, *self.keys],
                                   args=[self.holder, self.ttl_ms, self._start,
                                         1 if stay else 0])
        self.instances, self.share = int(reply[0]), int(reply[1])
        return frozenset(int(i) for i in reply[2:])

    def _update(self, held: FrozenSet[int], why: str) -> None:
        if held == self._held:
            return
        self._held = held
        log.info("checker shards held by %s: %d of %d %s(%d live instance%s, fair share %d)%s",
                 self.holder, len(held), self.shards,
                 "[" + ",".join(map(str, sorted(held))) + "] " if held else "",
                 self.instances, "" if self.instances == 1 else "s", self.share,
                 f": {why}" if why else "")
        if self.on_change is not None:
            self.on_change(held)

    async def _loop(self) -> None:
        warned = False
        while not self._closing:
            await asyncio.sleep(self.tick_every)
            if self._closing:
                return
            try:
                await self.tick()
                warned = False
            except asyncio.CancelledError:
                raise
            except (redis_errors.RedisError, OSError) as e:
                # Keep the shards only until the deadline already earned.
                self.held()
                if self._changed is not None:
                    self._changed.set()
                if not warned:
                    log.warning("checker shards: Redis unreachable (%s)", e)
                    warned = True
