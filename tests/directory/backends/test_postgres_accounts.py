"""PostgresAccounts against a real PostgreSQL cluster: the AccountStore contract,
hashes interchangeable with the SQLite store, concurrency and faults."""

from __future__ import annotations

import asyncio
import os

import psycopg
import pytest

from eurechat.directory.accounts.hashing import check_password
from eurechat.directory.accounts.postgres import PostgresAccounts
from eurechat.directory.accounts.sqlite import SqliteAccounts
from eurechat.directory.interfaces import AccountExists, AccountsUnavailable
from support.waits import run

PW = b"correct horse battery"


def test_account_store_contract(pg_dsn: str) -> None:
    async def main() -> None:
        store = PostgresAccounts(pg_dsn)
        await store.start()
        try:
            await store.create("bob", PW)
            await store.create("alice", b"another password")
            with pytest.raises(AccountExists):
                await store.create("bob", b"whatever123")
            with pytest.raises(ValueError):
                await store.create("-bad", PW)
            with pytest.raises(ValueError):
                await store.create("carol", b"short")
            assert await store.verify("bob", PW)
            assert not await store.verify("bob", b"wrong password")
            assert not await store.verify("nobody", PW)
            assert not await store.verify("../etc", PW)
            assert await store.names() == ["alice", "bob"]
            assert await store.delete("alice")
            assert not await store.delete("alice")
            assert await store.names() == ["bob"]
        finally:
            await store.close()

    run(main())


def test_same_hash_records_as_sqlite(pg_dsn: str, tmp_path) -> None:
    """Records are the SQLite store's format (shared helpers), so accounts can
    be moved between the two stores as they are."""
    async def main() -> None:
        store = PostgresAccounts(pg_dsn)
        await store.start()
        lite = SqliteAccounts(os.path.join(tmp_path, "a.sqlite3"))
        await lite.start()
        try:
            await store.create("dave", PW)
            await lite.create("dave", PW)
        finally:
            await store.close()
            await lite.close()

    run(main())
    with psycopg.connect(pg_dsn) as conn:
        record = conn.execute("SELECT hash FROM eurechat_accounts WHERE name='dave'").fetchone()[0]
    assert record.startswith("$argon2id$")
    assert check_password(PW, record)
    assert not check_password(b"not the password", record)


def test_two_hosts_one_user_base(pg_dsn: str) -> None:
    """Two stores (two hosts) on one database: an account made through one
    logs in through the other; a race on one name has exactly one winner."""
    async def main() -> None:
        a, b = PostgresAccounts(pg_dsn), PostgresAccounts(pg_dsn)
        await asyncio.gather(a.start(), b.start())  # concurrent first start: one schema
        try:
            await a.create("erin", PW)
            assert await b.verify("erin", PW)
            results = await asyncio.gather(a.create("frank", PW), b.create("frank", PW),
                                           return_exceptions=True)
            assert sum(r is None for r in results) == 1
            assert sum(isinstance(r, AccountExists) for r in results) == 1
        finally:
            await a.close()
            await b.close()

    run(main())


def test_unreachable_at_start() -> None:
    from support.servers import free_port

    async def main() -> None:
        store = PostgresAccounts(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
        with pytest.raises(AccountsUnavailable, match="cannot reach PostgreSQL"):
            await store.start()

    run(main())


def test_database_lost_and_back(own_pg) -> None:
    """PostgreSQL crashes: requests fail with AccountsUnavailable (not a hang,
    not a crash); once it is back the store reconnects on its own."""
    dsn = own_pg.create_database()

    async def main() -> None:
        store = PostgresAccounts(dsn, max_backoff=0)
        await store.start()
        try:
            await store.create("gina", PW)
            own_pg.kill()
            with pytest.raises(AccountsUnavailable):
                await store.verify("gina", PW)
            with pytest.raises(AccountsUnavailable):
                await store.names()
            await asyncio.get_running_loop().run_in_executor(None, own_pg.start)
            # max_backoff=0: the first request after the restart reconnects.
            assert await store.verify("gina", PW)
            assert await store.names() == ["gina"]
        finally:
            await store.close()

    run(main())
