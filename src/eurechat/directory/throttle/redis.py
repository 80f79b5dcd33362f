"""Failed-login throttling in Redis, shared by every directory host.

The sliding window of ``base``, as one Lua script per failure: a key's
counted failures are a sorted set of times taken from Redis's own clock (so
hosts with skewed clocks agree); ``ZREMRANGEBYSCORE`` drops those
``window`` or more old, and the failure that makes ``limit`` sets a block
key that expires ``window`` later and clears the set.  Everything expires by
itself: no clean-up job.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from ..redis_client import redis_client
from .base import Throttle, ThrottleUnavailable

__all__ = ["RedisThrottle"]

_FAILURE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local uniq = redis.call('INCR', KEYS[1])
for i = 2, #KEYS, 2 do
  local f, b = KEYS[i], KEYS[i + 1]
  redis.call('ZREMRANGEBYSCORE', f, '-inf', now - window)
  redis.call('ZADD', f, now, tostring(now) .. ':' .. tostring(uniq))
  redis.call('PEXPIRE', f, window)
  if redis.call('ZCARD', f) >= limit then
    redis.call('SET', b, '1', 'PX', window)
    redis.call('DEL', f)
  end
end
return 1
"""


class RedisThrottle(Throttle):
    """Failed-login throttling shared by every directory host (module doc)."""

    def __init__(self, url: str, *, limit: int = 5, window: float = 60.0,
                 prefix: str = "eurechat") -> None:
        super().__init__(limit, window)
        self.url = url
        self.prefix = prefix
        self._redis: Optional[Redis] = None
        self._script = None

    def _client(self) -> Redis:
        if self._redis is None:
            self._redis = redis_client(self.url)
            self._script = self._redis.register_script(_FAILURE)
        return self._redis

    async def start(self) -> None:
        """Check that Redis answers (called at startup for a one-line error)."""
        try:
            await self._client().ping()
        except (redis_errors.RedisError, OSError) as e:
            raise ThrottleUnavailable(f"cannot reach Redis at {self.url}: {e}") from e

    async def close(self) -> None:
        if self._redis is not None:
            try:
                await self._redis.aclose()
            except Exception:
                pass
            self._redis = None

    def _fail_key(self, key: str) -> str:
        return f"{self.prefix}:throttle:f:{key}"

    def _block_key(self, key: str) -> str:
        return f"{self.prefix}:throttle:b:{key}"

    async def blocked(self, keys: Sequence[str]) -> bool:
        if not keys:
            return False
        try:
            return bool(await self._client().exists(*[self._block_key(k) for k in keys]))
        except (redis_errors.RedisError, OSError) as e:
            raise ThrottleUnavailable(f"Redis unreachable: {e}") from e

    async def failure(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        redis_keys: List[str] = [f"{self.prefix}:throttle:uniq"]
        for k in keys:
            redis_keys += [self._fail_key(k), self._block_key(k)]
        self._client()
        try:
            await self._script(keys=redis_keys,
                               args=[self.limit, int(self.window * 1000)])
        except (redis_errors.RedisError, OSError) as e:
            raise ThrottleUnavailable(f"Redis unreachable: {e}") from e
