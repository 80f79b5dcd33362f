"""Embedded backends in isolation: password records, SQLite accounts and throttle
(shared by two instances, as by two workers), the presence hub's change feed,
and the backend factory."""

from __future__ import annotations

import asyncio
import os

import pytest

from eurechat.directory.accounts.hashing import check_password, hash_password, hash_scrypt
from eurechat.directory.accounts.sqlite import SqliteAccounts
from eurechat.directory.backends import make_accounts, make_registry, make_throttle
from eurechat.directory.interfaces import AccountExists, Registration
from eurechat.directory.presence.manager import ManagerRegistry, PresenceHub, start_hub_manager
from eurechat.directory.presence.memory import MemoryRegistry
from eurechat.directory.presence.view import ReadView
from eurechat.directory.throttle.memory import MemoryThrottle
from eurechat.directory.throttle.sqlite import SqliteThrottle


def test_password_record_salted_and_checked():
    a, b = hash_password(b"same password"), hash_password(b"same password")
    assert a != b and a.startswith("$argon2id$")
    assert check_password(b"same password", a) and not check_password(b"other", a)
    assert not check_password(b"x", "garbage$record")
    old = hash_scrypt(b"same password", 16)
    assert check_password(b"same password", old) and not check_password(b"other", old)


def test_sqlite_accounts(tmp_path):
    async def main():
        store = SqliteAccounts(str(tmp_path / "a.sqlite3"))
        await store.start()
        await store.create("alice", b"alice-password")
        with pytest.raises(AccountExists):
            await store.create("alice", b"other-password")
        with pytest.raises(ValueError):
            await store.create(".bad", b"alice-password")
        with pytest.raises(ValueError):
            await store.create("carl", b"short")
        assert await store.verify("alice", b"alice-password")
        assert not await store.verify("alice", b"wrong-password")
        assert not await store.verify("nobody", b"alice-password")
        assert not await store.verify("../bad name", b"alice-password")
        assert await store.names() == ["alice"]
        assert await store.delete("alice") and not await store.delete("alice")
        await store.close()
    asyncio.run(main())
    with open(tmp_path / "a.sqlite3", "rb") as f:
        assert b"alice-password" not in f.read()


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


def test_local_view_sorted_cache_and_expected_remove():
    v = ReadView()
    bob, ann = Registration("bob", "127.0.0.1", 2000), Registration("ann", "::1", 3000)
    v.put(bob)
    v.put(ann)
    assert list(v.query()) == [ann, bob] and v.query("bob") == (bob,)
    assert not v.discard("bob", expected=Registration("bob", "127.0.0.1", 2001))
    assert v.discard("bob", expected=bob) and list(v.query()) == [ann]


def test_presence_hub_feed_and_snapshot():
    hub = PresenceHub()
    sub, seq, regs = hub.subscribe(os.getpid())
    assert (seq, regs) == (0, [])
    hub.bind(("bob", "127.0.0.1", 2000), wait=0)
    hub.bind(("ann", "127.0.0.1", 2001), wait=0)
    seq, changes, snap = hub.changes(sub, 0, timeout=0)
    assert seq == 2 and snap is None
    assert [c[1:] for c in changes] == [("bind", ("bob", "127.0.0.1", 2000)),
                                        ("bind", ("ann", "127.0.0.1", 2001))]
    assert hub.remove("bob", ("bob", "127.0.0.1", 9999), wait=0) == (False, 2)
    assert hub.remove("bob", None, wait=0) == (True, 3)
    # An unknown subscriber (e.g. after a hub restart) gets a snapshot.
    seq, changes, snap = hub.changes(12345, 0, timeout=0)
    assert changes is None and snap == [("ann", "127.0.0.1", 2001)]
    # Nothing new: the long poll returns empty after its timeout.
    assert hub.changes(sub, 3, timeout=0.01) == (3, [], None)


def test_manager_registry_views_follow_writes(tmp_path):
    manager = start_hub_manager(str(tmp_path / "hub.sock"), b"k" * 32)
    try:
        async def main():
            a = ManagerRegistry(str(tmp_path / "hub.sock"), b"k" * 32)
            b = ManagerRegistry(str(tmp_path / "hub.sock"), b"k" * 32)
            await a.start()
            await b.start()
            for port in range(2000, 2020):
                reg = Registration("bob", "127.0.0.1", port)
                await a.bind(reg)
                assert b.query("bob") == (reg,)  # no sleep: ACKed means applied everywhere
                assert await b.remove("bob", expected=reg)
                assert a.query("bob") == ()
            assert await a.snapshot() == []
            await a.close()
            await b.close()
        asyncio.run(main())
    finally:
        manager.shutdown()


def test_factory():
    assert isinstance(make_registry("memory"), MemoryRegistry)
    with pytest.raises(ValueError):
        make_registry("ftp://nope")
    with pytest.raises(ValueError):
        make_registry("manager")
    assert isinstance(make_accounts(None, "/tmp/x"), SqliteAccounts)
    assert isinstance(make_accounts("sqlite:///tmp/y.sqlite3", "/tmp/x"), SqliteAccounts)
    assert make_accounts("sqlite:///tmp/y.sqlite3", "/tmp/x").path == "/tmp/y.sqlite3"
    assert isinstance(make_throttle("memory", "/tmp/x"), MemoryThrottle)
    assert isinstance(make_throttle(None, "/tmp/x"), SqliteThrottle)


def test_presence_hub_lagging_subscriber_gets_a_snapshot():
    import collections
    hub = PresenceHub()
    hub._log = collections.deque(maxlen=2)  # a tiny log: easy to fall behind
    sub, _, _ = hub.subscribe(os.getpid())
    for port in (2000, 2001, 2002):
        hub.bind(("bob", "127.0.0.1", port), wait=0)
    hub.bind(("ann", "127.0.0.1", 3000), wait=0)
    seq, changes, snap = hub.changes(sub, 0, timeout=0)
    assert seq == 4 and changes is None
    assert sorted(snap) == [("ann", "127.0.0.1", 3000), ("bob", "127.0.0.1", 2002)]
    # Close enough to the head: the changes themselves.
    seq, changes, snap = hub.changes(sub, 3, timeout=0)
    assert snap is None and [c[0] for c in changes] == [4]


def _open_at_once(path, barrier, results):
    from eurechat.directory.accounts.sqlite import SyncAccounts
    from eurechat.directory.throttle.sqlite import SqliteThrottle
    barrier.wait(10)
    try:
        SyncAccounts(path).close()
        SqliteThrottle(path)._open()
        results.put("ok")
    except Exception as exc:  # reported to the test, which fails on it
        results.put(repr(exc))


def test_many_processes_open_a_fresh_database_at_once(tmp_path):
    """Workers start together and all create/open the same SQLite file: none
    may fail with 'database is locked'."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    for attempt in range(3):
        path = str(tmp_path / f"fresh{attempt}.sqlite3")
        barrier, results = ctx.Barrier(8), ctx.Queue()
        procs = [ctx.Process(target=_open_at_once, args=(path, barrier, results))
                 for _ in range(8)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(10)
        assert outcomes == ["ok"] * 8


def test_unknown_user_costs_one_hash_like_a_wrong_password(tmp_path, monkeypatch):
    """Wrong user and wrong password take the same path: exactly one argon2id
    check each, the unknown (or invalid) user's against a dummy record with the
    same cost parameters as a real one, so neither the reply nor the time
    tells which it was.  (A spy around the real function records the calls.)"""
    import eurechat.directory.accounts.base as accounts_module
    calls = []
    real = accounts_module.verify_password

    def spy(password, record):
        calls.append(record)
        return real(password, record)

    monkeypatch.setattr(accounts_module, "verify_password", spy)

    async def main():
        store = SqliteAccounts(str(tmp_path / "a.sqlite3"))
        await store.start()
        await store.create("alice", b"alice-password")
        results = [await store.verify(name, b"wrong-password")
                   for name in ("alice", "nobody", "bad/name")]
        await store.close()
        return results

    assert asyncio.run(main()) == [False, False, False]
    assert len(calls) == 3
    real_record, dummy, dummy_again = calls
    assert dummy == dummy_again != real_record
    assert dummy.split("$")[:4] == real_record.split("$")[:4]  # scheme, version, m/t/p
