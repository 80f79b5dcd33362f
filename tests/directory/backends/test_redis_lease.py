"""RedisLease against a real redis-server: one leader among many, hand-over on
clean shutdown, take-over when the holder is killed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import redis

from eurechat.directory.election.lease import RedisLease
from support.waits import run

HOLDER = textwrap.dedent("""
    import asyncio, sys
    from eurechat.directory.election.lease import RedisLease

    async def main():
        lease = RedisLease(sys.argv[1], lease=float(sys.argv[2]), holder="doomed",
                           on_change=lambda on: print("leading" if on else "following",
                                                      flush=True))
        await lease.start()
        await asyncio.Event().wait()

    asyncio.run(main())
""")


async def first_to_lead(leases) -> None:
    waits = [asyncio.ensure_future(x.wait_leading()) for x in leases]
    try:
        done, _ = await asyncio.wait(waits, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert done, "nobody took the lease"
    finally:
        for w in waits:
            w.cancel()


def test_exactly_one_leader_and_clean_handover(redis_url: str) -> None:
    async def main() -> None:
        leases = [RedisLease(redis_url, lease=1.0, holder=f"h{i}") for i in range(3)]
        for lease in leases:
            await lease.start()
        try:
            await first_to_lead(leases)
            leaders = [x for x in leases if x.holds()]
            assert len(leaders) == 1
            first = leaders[0]
            with redis.Redis.from_url(redis_url, decode_responses=True) as admin:
                assert admin.get(first.key) == first.holder
            rest = [x for x in leases if x is not first]
            await first.close()
            await first_to_lead(rest)
            assert [x.holds() for x in rest].count(True) == 1
        finally:
            for lease in leases:
                await lease.close()

    run(main())


def test_takeover_when_the_holder_is_killed(redis_url: str) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, redis_url, "1.5"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "leading"

        async def main() -> None:
            standby = RedisLease(redis_url, lease=1.5, holder="standby")
            await standby.start()
            try:
                assert not standby.holds()
                holder.kill()  # SIGKILL: no release, the lease must expire
                assert await standby.wait_leading(10)
                with redis.Redis.from_url(redis_url, decode_responses=True) as admin:
                    assert admin.get(standby.key) == "standby"
            finally:
                await standby.close()

        run(main())
    finally:
        holder.kill()
        holder.wait(10)


def test_leader_steps_down_without_redis_and_leads_again(own_redis) -> None:
    """Redis lost: the holder cannot renew, so it stops leading once its lease
    could have expired (never two checkers).  Redis back: a leader again."""
    async def main() -> None:
        changes: asyncio.Queue = asyncio.Queue()
        lease = RedisLease(own_redis.url, lease=1.0, holder="solo",
                           on_change=changes.put_nowait)
        await lease.start()
        try:
            assert await lease.wait_leading(10)
            assert await asyncio.wait_for(changes.get(), 10) is True
            own_redis.kill()
            assert await asyncio.wait_for(changes.get(), 10) is False
            assert not lease.holds()
            own_redis.start()
            assert await lease.wait_leading(15)
        finally:
            await lease.close()

    run(main())
