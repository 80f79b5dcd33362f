"""Review findings: stopping the liveness checker and the checker leases
while they talk to a real redis-server.

On Python 3.11, ``asyncio.wait_for`` (used by redis-py to send every command)
returns the inner result instead of raising when a cancellation lands just as
that inner operation completes: the cancellation is *swallowed* and the task
runs on.  A checker whose ``close()`` relied on one ``cancel()`` then ran its
rounds for ever, and the directory ignored SIGTERM until it was SIGKILLed
(seen: 8 of 15 start/stop cycles with back-to-back rounds; the old single
lease's ``close()`` hung the same way).  The tests keep the checker's rounds
(and the lease's ticks) back to back so that a stop lands inside a Redis call,
many times over, and require every stop to end.
"""

from __future__ import annotations

import asyncio
import random
import signal

from eurechat.directory.checker import LivenessChecker
from eurechat.directory.interfaces import Registration
from eurechat.directory.lease import RedisLease, ShardedLease
from eurechat.directory.redis_registry import RedisRegistry, bucket_of
from support.client import Responder
from support.processes import start_directory
from support.waits import run

TRIALS = 40


async def stops(close, task: asyncio.Task) -> bool:
    """Whether ``close()`` returns and ``task`` is over within 5 s.  If not,
    ``task`` is put down by hand (cancelled again and again), so that a
    failure is reported instead of hanging the test."""
    closing = asyncio.ensure_future(close())
    await asyncio.wait({closing}, timeout=5.0)
    ok = closing.done() and task.done()
    for _ in range(200):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)
    await asyncio.wait({closing}, timeout=5.0)
    return ok


def test_checker_and_leases_stop_even_when_redis_swallows_a_cancel(redis_url: str) -> None:
    """Each trial starts a checker (rounds back to back), lets it run a random
    few milliseconds and stops it: ``close()`` must return and the round task
    be over, every time.  Same for both kinds of lease ticking every 2 ms."""
    rng = random.Random(7)

    async def main() -> None:
        reg = RedisRegistry(redis_url, follow=False)
        await reg.start()
        with Responder() as a, Responder() as b:
            await reg.bind(Registration("ann", "127.0.0.1", a.port))
            await reg.bind(Registration("ben", "127.0.0.1", b.port))
            sharded = ShardedLease(redis_url, shards=16, lease=1.0)
            await sharded.start()
            try:
                for election in (sharded, RedisLease(redis_url, lease=1.0)):
                    if isinstance(election, RedisLease):
                        await election.start()
                    for _ in range(TRIALS // 2):
                        checker = LivenessChecker(reg, election, 0.0001, 1.0, 100)
                        checker.start()
                        task = checker._task
                        assert task is not None
                        await asyncio.sleep(rng.uniform(0.005, 0.05))  # a random moment
                        assert await stops(checker.close, task), "the checker ran on"
                    if isinstance(election, RedisLease):
                        await asyncio.wait_for(election.close(), 5.0)
                for _ in range(TRIALS):
                    lease = RedisLease(redis_url, lease=0.02)  # a tick every 2 ms
                    await lease.start()
                    task = lease._task
                    assert task is not None
                    await asyncio.sleep(rng.uniform(0.002, 0.03))
                    assert await stops(lease.close, task), "the lease kept ticking"
            finally:
                await sharded.close()
                await reg.close()

    run(main(), timeout=120)


def test_directory_on_redis_exits_on_sigterm_mid_round(redis_url: str) -> None:
    """Through the CLI: a one-worker directory on Redis whose checker runs
    rounds back to back gets SIGTERM in the middle of them: exit 0, promptly
    (SPEC: within 5 s), every time."""
    with Responder() as peer:
        async def seed() -> None:
            reg = RedisRegistry(redis_url, follow=False)
            await reg.start()
            try:
                await reg.bind(Registration("pat", "127.0.0.1", peer.port))
            finally:
                await reg.close()

        run(seed())
        for shards in ("16", "1", "16"):
            d = start_directory("--registry", redis_url, "--checker-shards", shards,
                                "--lease", "1", "--check-interval", "0.001")
            try:
                d.wait_for_log(r"liveness round 5:")
                d.send_signal(signal.SIGTERM)
                assert d.wait(8) == 0, d.stderr()  # TimeoutExpired: it ignored SIGTERM
                assert "Traceback" not in d.stderr()
            finally:
                d.kill_group()


def test_an_entry_with_an_impossible_port_is_ignored_not_a_failed_round(redis_url: str) -> None:
    """A presence entry no directory could have written (port 70000, from a
    foreign writer or a hand edit) used to reach the probe, whose
    ``open_connection`` raised OverflowError: every round then failed with a
    traceback.  It is a malformed entry like any other: ignored (logged),
    and the round goes on."""
    async def main() -> None:
        reg = RedisRegistry(redis_url, follow=False)
        await reg.start()
        try:
            with Responder() as peer:
                await reg.bind(Registration("fine", "127.0.0.1", peer.port))
                await reg.bind(Registration("odd", "127.0.0.1", 7000))
                admin = reg._redis
                assert admin is not None
                await admin.hset("eurechat:presence", "odd", "127.0.0.1,70000")
                await admin.hset(f"eurechat:presence:b:{bucket_of('odd')}", "odd",
                                 "127.0.0.1,70000")
                assert [r.name for r in await reg.snapshot()] == ["fine"]
                lease = ShardedLease(redis_url, shards=4, lease=1.0)
                await lease.start()
                try:
                    assert await lease.wait_for(lambda held: len(held) == 4, 10)
                    checker = LivenessChecker(reg, lease, 3600, 1.0, 10)
                    probed, removed = await checker.check_round()
                    assert (probed, removed) == (1, [])
                finally:
                    await lease.close()
        finally:
            await reg.close()

    run(main())
