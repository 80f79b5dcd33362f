"""Every registry behind ``Registry`` keeps presence alike: in process
(memory), in the supervisor's Manager and in Redis (a real redis-server) run
the same tests, each through one client's own read view."""

from __future__ import annotations

import asyncio
from typing import List

import pytest

from eurechat.directory.backends import make_registry
from eurechat.directory.errors import BackendUnavailable
from eurechat.directory.presence.base import Registry, shard_of
from eurechat.directory.presence.manager import start_hub_manager
from eurechat.registration import Registration

BOB = Registration("bob", "127.0.0.1", 2000)
ANN = Registration("ann", "::1", 3000)
ZOE = Registration("zoe", "10.0.0.1", 4000)


@pytest.fixture(params=["memory", "manager", "redis"])
def spec(request, tmp_path):
    """``(spec, options)`` for ``make_registry``."""
    if request.param == "memory":
        yield "memory", {}
    elif request.param == "manager":
        address, key = str(tmp_path / "hub.sock"), b"k" * 32
        manager = start_hub_manager(address, key)
        try:
            yield "manager", {"manager_address": address, "authkey": key}
        finally:
            manager.shutdown()
    else:
        yield request.getfixturevalue("redis_url"), {}


def run(spec, body) -> None:
    kind, options = spec

    async def main():
        registry = make_registry(kind, **options)
        assert isinstance(registry, Registry)
        await registry.start()
        try:
            await body(registry)
        finally:
            await registry.close()
    asyncio.run(main())


def test_bind_then_query_reads_your_own_write(spec):
    async def body(r: Registry):
        assert r.query("bob") == () and list(r.query()) == []
        await r.bind(BOB)
        await r.bind(ANN)
        assert r.query("bob") == (BOB,)
        assert list(r.query()) == [ANN, BOB]  # sorted by name
        moved = Registration("bob", "127.0.0.1", 2001)
        await r.bind(moved)                    # the last BIND wins
        assert r.query("bob") == (moved,) and list(r.query()) == [ANN, moved]
    run(spec, body)


def test_remove_only_what_is_expected(spec):
    async def body(r: Registry):
        await r.bind(BOB)
        assert not await r.remove("bob", expected=Registration("bob", "127.0.0.1", 9999))
        assert r.query("bob") == (BOB,)
        assert await r.remove("bob", expected=BOB)
        assert r.query("bob") == ()
        assert not await r.remove("bob")
        await r.bind(ANN)
        assert await r.remove("ann") and list(r.query()) == []
    run(spec, body)


def test_query_limit_gives_the_first_by_name(spec):
    async def body(r: Registry):
        for reg in (ZOE, BOB, ANN):
            await r.bind(reg)
        assert list(r.query(limit=2)) == [ANN, BOB]
        assert list(r.query(limit=10)) == [ANN, BOB, ZOE]
    run(spec, body)


def test_a_returned_list_never_changes_afterwards(spec):
    """Callers cache what they build from a QUERY result by identity."""
    async def body(r: Registry):
        await r.bind(BOB)
        before = r.query()
        frozen = list(before)
        await r.bind(ANN)
        await r.remove("bob")
        assert list(before) == frozen
        assert list(r.query()) == [ANN]
    run(spec, body)


def test_snapshot_and_shards_come_from_the_source_of_truth(spec):
    async def body(r: Registry):
        regs = [Registration(f"user{i:03d}", "127.0.0.1", 3000 + i) for i in range(60)]
        for reg in regs:
            await r.bind(reg)
        assert sorted(await r.snapshot()) == regs
        mine = {0, 2}
        expected = [g for g in regs if shard_of(g.name, 4) in mine]
        assert expected and sorted(await r.snapshot_shards(mine, 4)) == expected
        assert sorted(await r.snapshot_shards({0, 1, 2, 3}, 4)) == regs
    run(spec, body)


def test_drop_pid_is_part_of_every_registry(spec):
    """The supervisor tells every registry about a dead worker; only the
    Manager waits for its workers, the others have nothing to forget."""
    async def body(r: Registry):
        await r.drop_pid(999_999)
        await r.bind(BOB)
        assert r.query("bob") == (BOB,)
    run(spec, body)


def test_a_registry_that_cannot_be_reached_is_backend_unavailable(tmp_path):
    async def main() -> List[BaseException]:
        errors = []
        for kind, options in (("manager", {"manager_address": str(tmp_path / "none.sock"),
                                           "authkey": b"k" * 32}),
                              ("redis://127.0.0.1:1/0", {})):
            registry = make_registry(kind, **options)
            try:
                await registry.start()
            except BackendUnavailable as exc:
                errors.append(exc)
            finally:
                await registry.close()
        return errors
    assert len(asyncio.run(main())) == 2
