"""Every throttle behind ``Throttle`` keeps the same sliding window (SPEC §2):
memory, SQLite and Redis (a real redis-server) run the same tests.

Memory and SQLite read an injected clock that the test moves; Redis reads its
own clock, so for Redis ``advance`` waits until the server's clock has passed
the point (a condition on Redis's ``TIME``, polled; no fixed sleep).  The
schedules leave wide margins: only "at least a window later" is ever waited
for, and what must happen within a window happens right away.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, List

import pytest
import redis.asyncio as aioredis

from eurechat.directory.errors import BackendUnavailable
from eurechat.directory.throttle.base import Throttle, count_failure
from eurechat.directory.throttle.memory import MemoryThrottle
from eurechat.directory.throttle.redis import RedisThrottle
from eurechat.directory.throttle.sqlite import SqliteThrottle

#: The window of tests that wait for time to pass (real time for Redis).
SHORT = 1.0


class Clock:
    """The time a throttle reads: ``now()``, and ``advance_to(t)``."""

    now: Callable[[], Awaitable[float]]
    advance_to: Callable[[float], Awaitable[None]]


class FakeClock(Clock):
    def __init__(self, start: float) -> None:
        self.t = start

    def read(self) -> float:
        return self.t

    async def now(self) -> float:
        return self.t

    async def advance_to(self, t: float) -> None:
        self.t = max(self.t, t)


class RedisClock(Clock):
    """Redis's own clock (the throttle's script reads ``TIME``)."""

    def __init__(self, url: str) -> None:
        self.client = aioredis.Redis.from_url(url)

    async def now(self) -> float:
        sec, usec = await self.client.time()
        return sec + usec / 1e6

    async def advance_to(self, t: float) -> None:
        deadline = time.monotonic() + 30
        while await self.now() < t:
            assert time.monotonic() < deadline, "Redis's clock did not move"
            await asyncio.sleep(0.01)  # polling a condition on the server's clock


@pytest.fixture(params=["memory", "sqlite", "redis"])
def kind(request) -> str:
    return request.param


@pytest.fixture
def make(kind, tmp_path, request):
    """``make(limit, window) -> (throttle, clock)``, started; closed after the test."""
    made: List[Throttle] = []
    clocks: List[Clock] = []

    async def factory(limit: int, window: float):
        if kind == "memory":
            clock = FakeClock(1000.0)
            throttle: Throttle = MemoryThrottle(limit, window, clock=clock.read)
        elif kind == "sqlite":
            clock = FakeClock(1.7e9)
            throttle = SqliteThrottle(str(tmp_path / f"t{len(made)}.sqlite3"), limit, window,
                                      clock=clock.read)
        else:
            url = request.getfixturevalue("redis_url")
            clock = RedisClock(url)
            throttle = RedisThrottle(url, limit=limit, window=window, prefix=f"t{len(made)}")
        await throttle.start()
        made.append(throttle)
        clocks.append(clock)
        return throttle, clock

    yield factory
    # closed by each test's ``run`` (the loop is the test's)


def run(make, body, limit: int, window: float = 60.0) -> None:
    async def main():
        throttle, clock = await make(limit, window)
        try:
            await body(throttle, clock, throttle.window)
        finally:
            await throttle.close()
            if isinstance(clock, RedisClock):
                await clock.client.aclose()
    asyncio.run(main())


def test_limit_failures_block_and_fewer_do_not(make):
    async def body(t, clock, w):
        for _ in range(2):
            await t.failure(["user:a"])
        assert not await t.blocked(["user:a"])
        await t.failure(["user:a"])
        assert await t.blocked(["user:a"])
    run(make, body, limit=3)


def test_keys_are_counted_and_blocked_separately(make):
    async def body(t, clock, w):
        await t.failure(["user:a", "addr:x"])
        await t.failure(["user:a", "addr:y"])
        assert await t.blocked(["user:a"])
        assert await t.blocked(["user:b", "user:a"])   # any blocked key refuses
        assert not await t.blocked(["addr:x", "addr:y", "user:b"])
        assert not await t.blocked([])
        await t.failure([])  # nothing to count: no error
    run(make, body, limit=2)


def test_a_failure_a_window_old_no_longer_counts(make):
    async def body(t, clock, w):
        await t.failure(["k"])
        first = await clock.now()
        await clock.advance_to(first + w * 1.05)
        await t.failure(["k"])
        assert not await t.blocked(["k"])
    run(make, body, limit=2, window=SHORT)


def test_the_window_slides_instead_of_restarting(make):
    """f1, f2 within a window; f3 more than a window after f1 and f4 at once:
    f2, f3, f4 are three failures within one window, so the key is blocked.
    A fixed window started at f1 would have restarted at f3 and counted two."""
    async def body(t, clock, w):
        start = await clock.now()
        await t.failure(["k"])
        after_f1 = await clock.now()
        await clock.advance_to(start + 0.6 * w)
        await t.failure(["k"])
        await clock.advance_to(after_f1 + 1.05 * w)
        await t.failure(["k"])
        assert not await t.blocked(["k"])  # f2, f3: two within the window
        await t.failure(["k"])
        assert await t.blocked(["k"])
    run(make, body, limit=3, window=SHORT)


def test_a_block_lasts_one_window_and_the_count_starts_over(make):
    async def body(t, clock, w):
        await t.failure(["k"])
        await t.failure(["k"])
        after_block = await clock.now()
        assert await t.blocked(["k"]) or await clock.now() >= after_block + w
        await clock.advance_to(after_block + w * 1.05)
        assert not await t.blocked(["k"])
        await t.failure(["k"])  # the failures before the block are forgotten
        assert not await t.blocked(["k"])
    run(make, body, limit=2, window=SHORT)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])  # memory: one process by definition
def test_two_instances_share_the_counts(make, kind):
    """Workers of one host (SQLite) and hosts (Redis) see each other's failures."""
    async def main():
        one, clock = await make(3, 60.0)
        two, _ = await make(3, 60.0)
        if kind == "redis":  # one key space: the same prefix
            two.prefix = one.prefix
        if kind == "sqlite":  # the same file, the same clock
            await two.close()
            two = SqliteThrottle(one.path, 3, 60.0, clock=clock.read)
            await two.start()
        try:
            await one.failure(["user:a"])
            await two.failure(["user:a"])
            assert not await one.blocked(["user:a"])
            await one.failure(["user:a"])
            assert await two.blocked(["user:a"])
        finally:
            await one.close()
            await two.close()
            if isinstance(clock, RedisClock):
                await clock.client.aclose()
    asyncio.run(main())


def test_count_failure_is_the_rule():
    assert count_failure((), 10.0, 3, 5.0) == ((10.0,), None)
    assert count_failure((6.0, 9.0), 10.0, 3, 5.0) == ((), 15.0)
    assert count_failure((5.0, 9.0), 10.0, 3, 5.0) == ((9.0, 10.0), None)  # 5.0 is a window old


def test_nonsense_limits_are_refused():
    with pytest.raises(ValueError):
        MemoryThrottle(limit=0)
    with pytest.raises(ValueError):
        MemoryThrottle(window=0)


def test_an_unreachable_sqlite_file_is_backend_unavailable(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    throttle = SqliteThrottle(str(tmp_path / "file" / "t.sqlite3"))
    with pytest.raises(BackendUnavailable):
        asyncio.run(throttle.start())


def test_sqlite_throttle_is_shared_between_instances(tmp_path):
    async def main():
        path = str(tmp_path / "t.sqlite3")
        one, two = SqliteThrottle(path, limit=3), SqliteThrottle(path, limit=3)
        await one.start()
        await two.start()
        await one.failure(["user:a", "addr:x"])
        await two.failure(["user:a"])
        assert not await one.blocked(["user:a"])
        await one.failure(["user:a"])
        assert await two.blocked(["user:a"]) and await two.blocked(["user:b", "user:a"])
        assert not await two.blocked(["addr:x", "user:b"])
        await one.close()
        await two.close()
    asyncio.run(main())


def test_memory_throttle_window():
    now = [0.0]
    t = MemoryThrottle(limit=2, window=10, clock=lambda: now[0])

    async def main():
        await t.failure(["k"])
        now[0] = 11.0  # the first failure fell out of the window
        await t.failure(["k"])
        assert not await t.blocked(["k"])
        await t.failure(["k"])
        assert await t.blocked(["k"])
        now[0] = 21.5  # blocked for one window
        assert not await t.blocked(["k"])
    asyncio.run(main())
