"""RedisRegistry against a real redis-server: semantics of presence, the
stream-fed read view shared by several instances, and its fallbacks."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest
import redis

from eurechat.directory.interfaces import Registration, RegistryUnavailable
from eurechat.directory.presence.redis import RedisRegistry
from support.waits import run, until

ALICE = Registration("alice", "127.0.0.1", 5001)
BOB = Registration("bob", "127.0.0.1", 5002)
CAROL = Registration("carol", "::1", 5003)


def test_bind_query_remove_semantics(redis_url: str) -> None:
    async def main() -> None:
        reg = RedisRegistry(redis_url)
        await reg.start()
        try:
            await reg.bind(CAROL)
            await reg.bind(ALICE)
            await reg.bind(BOB)
            # Read your own writes at once, sorted by name.
            assert list(reg.query()) == [ALICE, BOB, CAROL]
            assert list(reg.query("bob")) == [BOB]
            assert list(reg.query("nobody")) == []
            assert list(reg.query(limit=2)) == [ALICE, BOB]
            # Last BIND wins.
            moved = Registration("alice", "127.0.0.1", 6001)
            await reg.bind(moved)
            assert list(reg.query("alice")) == [moved]
            # The checker's remove only removes what it probed.
            assert not await reg.remove("alice", ALICE)
            assert list(reg.query("alice")) == [moved]
            assert await reg.remove("alice", moved)
            assert not await reg.remove("alice")
            assert list(reg.query()) == [BOB, CAROL]
            assert await reg.snapshot() == [BOB, CAROL]
        finally:
            await reg.close()

    run(main())


def test_a_listing_never_changes_under_its_holder(redis_url: str) -> None:
    """QUERY 0 gets the view's own sorted list (no copy per request); the next
    change copies it first, so a listing already handed out stays as it was."""
    async def main() -> None:
        reg = RedisRegistry(redis_url)
        await reg.start()
        try:
            await reg.bind(BOB)
            listing = reg.query()
            assert reg.query() is listing  # no change: the same object, no copy
            await reg.bind(ALICE)
            await reg.bind(Registration("bob", "127.0.0.1", 9999))
            await reg.remove("bob")
            assert list(listing) == [BOB]
            assert list(reg.query()) == [ALICE]
        finally:
            await reg.close()

    run(main())


def test_registrations_outlive_the_instance(redis_url: str) -> None:
    """A registration is in Redis, not in the process that made it."""
    async def main() -> None:
        first = RedisRegistry(redis_url)
        await first.start()
        await first.bind(ALICE)
        await first.close()
        second = RedisRegistry(redis_url)
        await second.start()
        try:
            assert list(second.query()) == [ALICE]
        finally:
            await second.close()

    run(main())


def test_change_feed_reaches_other_instances(redis_url: str) -> None:
    """A BIND through one instance shows in QUERY through another without it
    reading Redis per QUERY: the feed updates its view."""
    async def main() -> None:
        a, b = RedisRegistry(redis_url), RedisRegistry(redis_url)
        await a.start()
        await b.start()
        try:
            resyncs = b.resyncs
            await a.bind(ALICE)
            await until(lambda: list(b.query("alice")) == [ALICE], b.wait_changed,
                        what="alice on b")
            await a.bind(Registration("alice", "127.0.0.1", 7000))
            await a.bind(BOB)
            await a.remove("bob")
            await until(lambda: list(b.query()) == [Registration("alice", "127.0.0.1", 7000)],
                        b.wait_changed, what="b to follow a")
            assert b.resyncs == resyncs, "followed the stream, no full reread"
        finally:
            await a.close()
            await b.close()

    run(main())


def test_writer_without_a_read_view(redis_url: str) -> None:
    """The supervisor's checker client (follow=False) writes and snapshots but
    keeps no view and reads no change log."""
    async def main() -> None:
        writer, follower = RedisRegistry(redis_url, follow=False), RedisRegistry(redis_url)
        await writer.start()
        await follower.start()
        try:
            await writer.bind(ALICE)
            assert await writer.snapshot() == [ALICE]
            with pytest.raises(RegistryUnavailable):
                writer.query()
            await until(lambda: list(follower.query()) == [ALICE], follower.wait_changed,
                        what="alice on the follower")
            assert await writer.remove("alice", ALICE)
            await until(lambda: list(follower.query()) == [], follower.wait_changed,
                        what="removal on the follower")
        finally:
            await writer.close()
            await follower.close()

    run(main())


def test_many_registrations_sorted_and_limited(redis_url: str) -> None:
    async def main() -> None:
        a, b = RedisRegistry(redis_url), RedisRegistry(redis_url)
        await a.start()
        await b.start()
        try:
            names = [f"user{i:04d}" for i in range(1500)]
            for i, n in enumerate(reversed(names)):
                await a.bind(Registration(n, "127.0.0.1", 2000 + i))
            await until(lambda: len(b.query()) == 1500, b.wait_changed, what="1500 on b")
            assert [r.name for r in b.query()] == names
            assert [r.name for r in b.query(limit=10)] == names[:10]
            # A third instance fills its view by scanning Redis.
            c = RedisRegistry(redis_url)
            await c.start()
            assert list(c.query()) == list(b.query())
            await c.close()
        finally:
            await a.close()
            await b.close()

    run(main())


def test_bursts_queue_for_a_connection(redis_url: str) -> None:
    """A thousand concurrent writes (a checker round removing a crowd that went
    away at once) wait for a pooled connection instead of failing."""
    async def main() -> None:
        reg = RedisRegistry(redis_url)
        await reg.start()
        try:
            regs = [Registration(f"crowd{i:04d}", "127.0.0.1", 2000 + i) for i in range(1000)]
            await asyncio.gather(*(reg.bind(r) for r in regs))
            assert len(reg.query()) == 1000
            removed = await asyncio.gather(*(reg.remove(r.name, r) for r in regs))
            assert all(removed)
            assert await reg.snapshot() == []
        finally:
            await reg.close()

    run(main())


def test_interrupted_feed_resumes_from_its_cursor(redis_url: str) -> None:
    """Kill the follower's feed connection inside Redis and write meanwhile: the
    follower notices, checks that Redis still has the last change it applied,
    continues from there (no full reread) and misses nothing."""
    async def main() -> None:
        a, b = RedisRegistry(redis_url), RedisRegistry(redis_url)
        await a.start()
        await b.start()
        try:
            await a.bind(ALICE)
            await until(lambda: bool(b.query("alice")), b.wait_changed, what="alice on b")
            before, resyncs = b.resumes, b.resyncs
            with redis.Redis.from_url(redis_url) as admin:
                # The blocked XREAD of each follower; kill them all.
                killed = 0
                for client in admin.client_list():
                    if client.get("cmd") == "xread":
                        admin.client_kill_filter(_id=client["id"])
                        killed += 1
                assert killed >= 1
            await a.bind(BOB)
            await a.remove("alice")
            await until(lambda: b.resumes > before and list(b.query()) == [BOB],
                        b.wait_changed, what="b to resume")
            assert b.resyncs == resyncs
        finally:
            await a.close()
            await b.close()

    run(main())


def test_gap_in_the_log_triggers_a_resync(redis_url: str) -> None:
    """Redis flushed under a running follower: the sequence numbers restart,
    the follower sees the gap and rebuilds its view from Redis."""
    async def main() -> None:
        a, b = RedisRegistry(redis_url), RedisRegistry(redis_url)
        await a.start()
        await b.start()
        try:
            for r in (ALICE, BOB, CAROL):
                await a.bind(r)
            await until(lambda: len(b.query()) == 3, b.wait_changed, what="3 on b")
            before = b.resyncs
            with redis.Redis.from_url(redis_url) as admin:
                admin.flushdb()
            await a.bind(Registration("dave", "127.0.0.1", 5004))
            await until(lambda: b.resyncs > before and [r.name for r in b.query()] == ["dave"],
                        b.wait_changed, what="b to notice the gap")
        finally:
            await a.close()
            await b.close()

    run(main())


def test_redis_down_and_back(own_redis) -> None:
    """Redis dies: reads and writes report RegistryUnavailable (no stale answers);
    Redis returns on the same port: the view is rebuilt, nothing it kept is lost."""
    async def main() -> None:
        reg = RedisRegistry(own_redis.url, max_backoff=0.2)
        await reg.start()
        try:
            await reg.bind(ALICE)
            await reg.bind(BOB)
            # Both writes echoed by the log (so the view has a cursor to resume from).
            await until(lambda: reg.applied_seq == 2, reg.wait_changed, what="the echo")
            own_redis.kill()
            await until(lambda: not reg.live, reg.wait_changed, what="feed to notice")
            with pytest.raises(RegistryUnavailable):
                reg.query()
            with pytest.raises(RegistryUnavailable):
                await reg.bind(CAROL)
            with pytest.raises(RegistryUnavailable):
                await reg.snapshot()
            own_redis.start()
            await until(lambda: reg.live, reg.wait_changed, timeout=15, what="feed back")
            assert reg.resumes == 1, "Redis kept its log: the view continues from it"
            assert list(reg.query()) == [ALICE, BOB]
            await reg.bind(CAROL)
            assert list(reg.query()) == [ALICE, BOB, CAROL]
        finally:
            await reg.close()

    run(main())


def test_unreachable_at_start() -> None:
    from support.servers import free_port

    async def main() -> None:
        reg = RedisRegistry(f"redis://127.0.0.1:{free_port()}/0")
        with pytest.raises(RegistryUnavailable, match="cannot reach Redis"):
            await reg.start()

    run(main())


def test_redis_back_without_its_data_is_not_trusted(own_redis) -> None:
    """Redis comes back empty (no persistence, a new server on the same
    address): the view must not keep serving registrations Redis no longer
    has -- its last applied change is not in the new log, so it rebuilds."""
    async def main() -> None:
        reg = RedisRegistry(own_redis.url, max_backoff=0.2)
        await reg.start()
        try:
            await reg.bind(ALICE)
            await reg.bind(BOB)
            await until(lambda: reg.applied_seq == 2, reg.wait_changed, what="the echo")
            await reg.bind(Registration("dave", "127.0.0.1", 5004))  # maybe not echoed
            own_redis.kill()
            for entry in os.listdir(own_redis.dir):
                path = os.path.join(own_redis.dir, entry)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            await until(lambda: not reg.live, reg.wait_changed, what="feed to notice")
            own_redis.start()
            await until(lambda: reg.live, reg.wait_changed, timeout=15, what="feed back")
            assert reg.resumes == 0
            assert list(reg.query()) == []
            await reg.bind(CAROL)
            assert list(reg.query()) == [CAROL]
        finally:
            await reg.close()

    run(main())
