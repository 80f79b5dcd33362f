"""Sharded liveness-checker leases (``--checker-shards``) against a real
redis-server: the shards are split fairly and exclusively between the live
instances, rebalance when one joins or leaves, move to the survivor when one
is SIGKILLed, and the survivor then removes the dead registrations of its new
shards.  Plus the pipelined removals the checker relies on."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from typing import Dict, List, Optional

import pytest
import redis

from eurechat.directory.election.lease import ShardedLease, fair_share, shard_of
from eurechat.directory.interfaces import Registration, RegistryUnavailable
from eurechat.directory.presence.base import bucket_of
from eurechat.directory.presence.redis import RedisRegistry
from support.client import Responder
from support.processes import Directory, start_directory, test_env
from support.waits import run, until

SHARDS = 8


# -- the shard function ------------------------------------------------------------------
def test_shard_of_is_stable_across_processes_and_spreads_names() -> None:
    """Every host must put a name in the same shard: a per-process salted hash
    (Python's ``hash``) would make two hosts disagree."""
    names = [f"user{i}" for i in range(2000)]
    here = [shard_of(n, 16) for n in names]
    code = ("import sys; from eurechat.directory.election.lease import shard_of; "
            "print(' '.join(str(shard_of(f'user{i}', 16)) for i in range(2000)))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=30, env=test_env(PYTHONHASHSEED=seed), check=True)
        assert [int(x) for x in out.stdout.split()] == here
    counts = Counter(here)
    assert set(counts) == set(range(16))
    assert max(counts.values()) < 1.3 * len(names) / 16 < 1.3 * 1.3 * min(counts.values())


@pytest.mark.parametrize("shards,instances,share", [(16, 1, 16), (16, 2, 8), (16, 3, 6),
                                                   (16, 16, 1), (16, 40, 1), (1, 2, 1)])
def test_fair_share_covers_every_shard(shards: int, instances: int, share: int) -> None:
    assert fair_share(shards, instances) == share
    assert share * instances >= shards


# -- leases between instances ----------------------------------------------------------
def holders(url: str, shards: int = SHARDS) -> Dict[int, Optional[str]]:
    """Who holds each shard lease, read from Redis (the authority)."""
    with redis.Redis.from_url(url, decode_responses=True) as admin:
        return {i: admin.get(f"eurechat:lease:checker:{shards}:{i}") for i in range(shards)}


def assert_fair_split(url: str, leases: List[ShardedLease]) -> None:
    owner = holders(url)
    assert all(owner.values()), f"a shard nobody holds: {owner}"
    share = fair_share(SHARDS, len(leases))
    per = Counter(owner.values())
    assert set(per) == {x.holder for x in leases}, per
    assert max(per.values()) <= share, per
    for x in leases:  # the local view agrees with Redis
        assert x.held() == {i for i, h in owner.items() if h == x.holder}


def split_done(url: str, leases: List[ShardedLease]) -> bool:
    owner = holders(url)
    share = fair_share(SHARDS, len(leases))
    return (all(owner.values()) and all(x.instances == len(leases) for x in leases)
            and max(Counter(owner.values()).values()) <= share
            and all(x.held() == {i for i, h in owner.items() if h == x.holder}
                    for x in leases))


def test_shards_split_fairly_and_rebalance_on_leave_and_join(redis_url: str) -> None:
    async def main() -> None:
        leases = [ShardedLease(redis_url, shards=SHARDS, lease=1.0, holder=f"h{i}")
                  for i in range(3)]
        extra = ShardedLease(redis_url, shards=SHARDS, lease=1.0, holder="late")
        for x in leases:
            await x.start()
        try:
            await until(lambda: split_done(redis_url, leases), leases[0].next_tick,
                        what="three instances sharing the shards")
            assert_fair_split(redis_url, leases)   # 3 + 3 + 2
            # A clean shutdown hands its shards over at once.
            await leases[0].close()
            rest = leases[1:]
            await until(lambda: split_done(redis_url, rest), rest[0].next_tick,
                        what="two instances taking over")
            assert_fair_split(redis_url, rest)     # 4 + 4
            assert sorted(len(x.held()) for x in rest) == [4, 4]
            # A newcomer gets its share: the others hand back what exceeds theirs.
            await extra.start()
            now = rest + [extra]
            await until(lambda: split_done(redis_url, now), extra.next_tick,
                        what="a newcomer getting its share")
            assert_fair_split(redis_url, now)
            assert extra.held()
        finally:
            for x in leases + [extra]:
                await x.close()
        assert not any(holders(redis_url).values()), "close() must release every shard"

    run(main())


def test_shards_are_given_up_without_redis_and_taken_again(own_redis) -> None:
    """Redis lost: no renewal, so the shards are dropped once their leases could
    have expired (never two checkers of one shard).  Redis back: held again."""
    async def main() -> None:
        lease = ShardedLease(own_redis.url, shards=4, lease=1.0, holder="solo")
        await lease.start()
        try:
            assert await lease.wait_for(lambda h: len(h) == 4, 10)
            assert await lease.leading()
            own_redis.kill()
            assert await lease.wait_for(lambda h: not h, 10)
            assert not await lease.leading()
            own_redis.start()
            assert await lease.wait_for(lambda h: len(h) == 4, 15)
        finally:
            await lease.close()

    run(main())


# -- pipelined removals -------------------------------------------------------------------
def test_concurrent_removals_are_pipelined_and_still_by_value(redis_url: str) -> None:
    async def main() -> None:
        reg = RedisRegistry(redis_url)
        await reg.start()
        try:
            regs = [Registration(f"p{i:04d}", "127.0.0.1", 1000 + i) for i in range(1000)]
            await asyncio.gather(*(reg.bind(r) for r in regs))
            # Half of the removals expect a value that is no longer there (a
            # BIND that raced with the probe): those must keep their entry.
            stale = [r._replace(port=r.port + 1) if i % 2 else r for i, r in enumerate(regs)]
            done = await asyncio.gather(*(reg.remove(r.name, expected=r) for r in stale))
            assert done == [i % 2 == 0 for i in range(len(regs))]
            assert reg.removal_batches < 50, "removals were not batched"
            left = {r.name for r in await reg.snapshot()}
            assert left == {r.name for i, r in enumerate(regs) if i % 2}
            assert {r.name for r in reg.query()} == left  # read your own writes
            # A Redis that forgot its scripts: the batch loads it and goes on.
            with redis.Redis.from_url(redis_url) as admin:
                admin.script_flush()
            assert await reg.remove("p0001", expected=regs[1])
        finally:
            await reg.close()

    run(main())


def test_removals_fail_cleanly_without_redis(own_redis) -> None:
    async def main() -> None:
        reg = RedisRegistry(own_redis.url, follow=False)
        await reg.start()
        try:
            await reg.bind(Registration("gone", "127.0.0.1", 9))
            own_redis.kill()
            results = await asyncio.gather(*(reg.remove("gone") for _ in range(3)),
                                           return_exceptions=True)
            assert all(isinstance(r, RegistryUnavailable) for r in results), results
        finally:
            await reg.close()

    run(main())


# -- the per-bucket index a shard round reads ----------------------------------------------
def test_a_shard_round_reads_only_its_buckets_and_an_old_writer_is_mended(redis_url: str) -> None:
    """``snapshot_shards`` returns exactly the registrations of the shards asked
    for, from the index.  Entries written the way a version without the index
    wrote them (hash only), or left behind in the index, are found by the
    count check and mended before the read, so none escapes the checker."""
    async def main() -> None:
        reg = RedisRegistry(redis_url, follow=False)
        await reg.start()
        try:
            regs = [Registration(f"u{i}", "127.0.0.1", 2000 + i) for i in range(600)]
            await asyncio.gather(*(reg.bind(r) for r in regs))
            mine = {1, 5}

            def expected(pool):
                return sorted(r for r in pool if shard_of(r.name, SHARDS) in mine)

            assert sorted(await reg.snapshot_shards(mine, SHARDS)) == expected(regs)
            everything = await reg.snapshot_shards(set(range(SHARDS)), SHARDS)
            assert sorted(everything) == await reg.snapshot() == sorted(regs)
            with redis.Redis.from_url(redis_url, decode_responses=True) as admin:
                admin.config_resetstat()
                await reg.snapshot_shards(mine, SHARDS)
                stats = admin.info("commandstats")
                # 2 of 8 shards = 256 of 1024 buckets, 64 per round trip; no HSCAN.
                assert stats["cmdstat_hgetall"]["calls"] == 1024 * 2 // SHARDS
                assert "cmdstat_hscan" not in stats
                # An old writer: straight into the hash, no index entry; and a
                # stray index entry whose registration is gone.
                old = [Registration(f"old{i}", "127.0.0.1", 3000 + i) for i in range(40)]
                for r in old:
                    admin.hset("eurechat:presence", r.name, f"{r.address},{r.port}")
                stray = next(f"stray{i}" for i in range(1000) if shard_of(f"stray{i}", SHARDS)
                             in mine)
                admin.hset(f"eurechat:presence:b:{bucket_of(stray)}", stray, "127.0.0.1,9")
            got = sorted(await reg.snapshot_shards(mine, SHARDS))
            assert got == expected(regs + old)
            assert stray not in {r.name for r in got}
            # A stale index value is mended by the (no-op) removal that probes it.
            victim = expected(regs)[0]
            with redis.Redis.from_url(redis_url, decode_responses=True) as admin:
                key = f"eurechat:presence:b:{bucket_of(victim.name)}"
                admin.hset(key, victim.name, "127.0.0.1,1")
                assert not await reg.remove(victim.name, expected=victim._replace(port=1))
                assert admin.hget(key, victim.name) == f"127.0.0.1,{victim.port}"
        finally:
            await reg.close()

    run(main())


# -- two directories through the CLI ------------------------------------------------------
class DeadPorts:
    """Loopback ports bound but never listening, held until ``close()``: a
    connection is refused, and no other process can take the port meanwhile
    and answer the checker's PING (a merely released port could be handed to
    another test's server at once)."""

    def __init__(self) -> None:
        self._socks: List[socket.socket] = []

    def new(self) -> int:
        s = socket.socket()
        self._socks.append(s)
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

    def close(self) -> None:
        for s in self._socks:
            s.close()


def shard_pids(url: str) -> Dict[int, int]:
    """shard -> pid of the process holding its lease (the holder id is host:pid:nonce)."""
    return {i: int(h.split(":")[1]) for i, h in holders(url).items() if h}


def name_in(shards, prefix: str) -> str:
    return next(f"{prefix}{i}" for i in range(10_000) if shard_of(f"{prefix}{i}", SHARDS)
                in shards)


def seed(url: str, regs: List[Registration]) -> None:
    async def main() -> None:
        reg = RedisRegistry(url, follow=False)
        await reg.start()
        try:
            for r in regs:
                await reg.bind(r)
        finally:
            await reg.close()

    run(main())


def present(url: str) -> Dict[str, str]:
    with redis.Redis.from_url(url, decode_responses=True) as admin:
        return admin.hgetall("eurechat:presence")


def test_two_directories_split_shards_and_survivor_takes_over(redis_url: str) -> None:
    """A: the installed console script with --workers 2 (checker in the
    supervisor); B: ``python -m eurechat.directory`` with one worker.  Both
    probe their own shards; SIGKILL A's whole group and B takes every shard
    over, then removes a dead registration of one of A's former shards and
    keeps a live one."""
    opts = ("--registry", redis_url, "--checker-shards", str(SHARDS), "--lease", "2",
            "--check-interval", "0.3")
    script = os.path.join(os.path.dirname(sys.executable), "eurechat-directory")
    split = re.compile(rf"checker shards held by .*: {SHARDS // 2} of {SHARDS} ")
    a: Optional[Directory] = None
    b: Optional[Directory] = None
    dead = DeadPorts()
    with Responder() as alive_peer:
        try:
            a = start_directory(*opts, "--workers", "2", cmd=[script])
            b = start_directory(*opts)
            # A held everything alone, then handed half over when B appeared.
            a.wait_for_log(split, timeout=15)
            b.wait_for_log(split, timeout=15)
            owner = shard_pids(redis_url)
            assert sorted(owner) == list(range(SHARDS)), owner
            assert Counter(owner.values()) == {a.pid: SHARDS // 2, b.pid: SHARDS // 2}
            a_shards = {i for i, pid in owner.items() if pid == a.pid}
            b_shards = set(range(SHARDS)) - a_shards

            # Each one probes (and cleans) its own shards.
            ghost_a, ghost_b = name_in(a_shards, "ghosta"), name_in(b_shards, "ghostb")
            seed(redis_url, [Registration(ghost_a, "127.0.0.1", dead.new()),
                             Registration(ghost_b, "127.0.0.1", dead.new())])
            a.wait_for_log(rf"removed {ghost_a} ", timeout=15)
            b.wait_for_log(rf"removed {ghost_b} ", timeout=15)
            assert f"removed {ghost_b} " not in a.stderr()
            assert f"removed {ghost_a} " not in b.stderr()

            a.kill_group()  # a crash: its leases are not released, they expire
            killed = time.monotonic()
            # ... within 0.9 lease (1.8 s) of A's last tick, keys and membership alike:
            with redis.Redis.from_url(redis_url, decode_responses=True) as admin:
                ttls = [admin.pttl(f"eurechat:lease:checker:{SHARDS}:{i}") for i in a_shards]
                now_ms = int(admin.time()[0]) * 1000
                expiry = dict(admin.zrange(f"eurechat:lease:checker:{SHARDS}:members", 0, -1,
                                           withscores=True))
            assert all(0 < t <= 1800 for t in ttls), ttls
            a_member = [h for h in expiry if h.split(":")[1] == str(a.pid)]
            assert len(a_member) == 1 and expiry[a_member[0]] - now_ms <= 1800 + 1000
            orphan = name_in(a_shards, "orphan")
            survivor = name_in(a_shards, "alive")
            seed(redis_url, [Registration(orphan, "127.0.0.1", dead.new()),
                             Registration(survivor, "127.0.0.1", alive_peer.port)])
            b.wait_for_log(rf"checker shards held by .*: {SHARDS} of {SHARDS} ", timeout=20)
            took = time.monotonic() - killed
            assert set(shard_pids(redis_url).values()) == {b.pid}
            b.wait_for_log(rf"removed {orphan} ", timeout=15)
            alive_peer.pinged.clear()
            assert alive_peer.pinged.wait(15), "the survivor never probed the live peer"
            assert survivor in present(redis_url) and orphan not in present(redis_url)
            print(f"takeover of {len(a_shards)} shards {took:.2f} s after SIGKILL (lease 2 s)")
        finally:
            for d in (a, b):
                if d is not None:
                    d.stop()
            dead.close()


def test_checker_shards_out_of_range_is_a_usage_error(tmp_path) -> None:
    res = subprocess.run([sys.executable, "-m", "eurechat.directory", "--port", "0",
                          "--data-dir", str(tmp_path), "--checker-shards", "0"],
                         capture_output=True, text=True, timeout=60, env=test_env())
    assert res.returncode == 2
    assert "--checker-shards" in res.stderr and "must be >= 1" in res.stderr
    assert "Traceback" not in res.stderr
