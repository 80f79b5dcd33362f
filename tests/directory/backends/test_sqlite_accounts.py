"""The SQLite account store on its own: accounts created, checked and
deleted; many processes opening a fresh database at once; an unknown user
costing one hash like a wrong password."""

from __future__ import annotations

import asyncio

import pytest

from eurechat.directory.accounts.sqlite import SqliteAccounts
from eurechat.directory.interfaces import AccountExists
from eurechat.directory.throttle.sqlite import SqliteThrottle


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


def _open_at_once(path, barrier, results):
    from eurechat.directory.accounts.sqlite import SyncAccounts
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
