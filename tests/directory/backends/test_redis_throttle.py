"""RedisThrottle against a real redis-server: shared counters, expiry, faults."""

from __future__ import annotations

import pytest
import redis

from eurechat.directory.errors import BackendUnavailable, ThrottleUnavailable
from eurechat.directory.throttle.redis import RedisThrottle
from support.waits import run


def test_failures_are_shared_between_hosts(redis_url: str) -> None:
    """Two directories on one Redis count the same failures: an attacker
    gains nothing by spreading attempts over hosts."""
    async def main() -> None:
        a = RedisThrottle(redis_url, limit=3, window=60)
        b = RedisThrottle(redis_url, limit=3, window=60)
        await a.start()
        await b.start()
        try:
            await a.failure(["user:mallory", "addr:10.1.1.1"])
            await b.failure(["user:mallory"])
            assert not await a.blocked(["user:mallory"])
            await b.failure(["user:mallory", "addr:10.1.1.2"])
            assert await a.blocked(["user:mallory"])
            assert await b.blocked(["addr:10.9.9.9", "user:mallory"])
            assert not await a.blocked(["addr:10.1.1.1"])
            assert not await a.blocked(["user:alice"])
            assert not await a.blocked([])
        finally:
            await a.close()
            await b.close()

    run(main())


def test_everything_expires_by_itself(redis_url: str) -> None:
    """No key is left without a TTL (no cleanup job needed); the block lasts
    the window."""
    async def main() -> None:
        t = RedisThrottle(redis_url, limit=2, window=30, prefix="ttl")
        try:
            await t.failure(["user:x"])
            await t.failure(["user:x"])
            assert await t.blocked(["user:x"])
        finally:
            await t.close()

    run(main())
    with redis.Redis.from_url(redis_url) as admin:
        keys = [k.decode() for k in admin.keys("ttl:throttle:*")]
        assert "ttl:throttle:b:user:x" in keys
        for key in keys:
            if key != "ttl:throttle:uniq":
                ttl = admin.pttl(key)
                assert 0 < ttl <= 30_000, (key, ttl)


def test_redis_down_is_unavailable(own_redis) -> None:
    async def main() -> None:
        t = RedisThrottle(own_redis.url)
        await t.start()
        try:
            own_redis.kill()
            with pytest.raises(ThrottleUnavailable):
                await t.blocked(["user:a"])
            # The one "backend unavailable" base: the server answers
            # "directory unavailable" for it and keeps the session.
            with pytest.raises(BackendUnavailable):
                await t.failure(["user:a"])
            own_redis.start()
            assert not await t.blocked(["user:a"])
        finally:
            await t.close()

    run(main())
