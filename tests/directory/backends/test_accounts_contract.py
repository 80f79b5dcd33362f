"""Every account store behind ``AccountStore`` creates, checks and migrates
accounts alike: SQLite and PostgreSQL (a real throwaway cluster) run the same
tests, including the move from scrypt records to argon2id (SPEC §5.3)."""

from __future__ import annotations

import asyncio
import threading

import pytest

import eurechat.directory.accounts.base as accounts_base
from eurechat.directory.accounts.base import AccountStore
from eurechat.directory.accounts.hashing import hash_scrypt
from eurechat.directory.backends import make_accounts, make_sync_accounts
from eurechat.directory.errors import AccountExists
from eurechat.names import INVALID_PASSWORD, INVALID_USERNAME

PW = b"alice-password"


@pytest.fixture(params=["sqlite", "postgres"])
def spec(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/accounts.sqlite3"
    return request.getfixturevalue("pg_dsn")


def run(spec: str, body) -> None:
    async def main():
        store = make_accounts(spec, "unused")
        assert isinstance(store, AccountStore)
        await store.start()
        try:
            return await body(store)
        finally:
            await store.close()
    return asyncio.run(main())


def test_create_verify_delete_names(spec):
    async def body(store):
        await store.create("alice", PW)
        await store.create("Bob", b"bob-password")
        with pytest.raises(AccountExists):
            await store.create("alice", b"another password")
        assert await store.verify("alice", PW)
        assert not await store.verify("alice", b"wrong password")
        assert not await store.verify("nobody", PW)
        assert await store.names() == ["Bob", "alice"]  # byte order
        assert await store.delete("alice") and not await store.delete("alice")
        assert not await store.verify("alice", PW)
    run(spec, body)


def test_invalid_names_and_passwords_say_why(spec):
    async def body(store):
        with pytest.raises(ValueError) as exc:
            await store.create(".alice", PW)
        assert str(exc.value) == INVALID_USERNAME
        with pytest.raises(ValueError) as exc:
            await store.create("alice", b"short")
        assert str(exc.value) == INVALID_PASSWORD
        assert await store.names() == []
    run(spec, body)


def test_new_records_are_argon2id(spec):
    async def body(store):
        await store.create("alice", PW)
    run(spec, body)
    sync = make_sync_accounts(spec, "unused")
    try:
        assert sync.record("alice").startswith("$argon2id$v=19$")
    finally:
        sync.close()


def test_an_old_scrypt_record_logs_in_and_is_rewritten_as_argon2id(spec):
    sync = make_sync_accounts(spec, "unused")
    try:
        old = hash_scrypt(PW, 16)
        sync.insert("alice", old)
        sync.insert("bob", hash_scrypt(b"bob-password", 16))
    finally:
        sync.close()

    async def body(store):
        assert not await store.verify("alice", b"wrong password")
        assert not await store.verify("bob", b"wrong password")
        assert await store.verify("alice", PW)
    run(spec, body)
    sync = make_sync_accounts(spec, "unused")
    try:
        new = sync.record("alice")
        assert new.startswith("$argon2id$") and new != old
        # A failed login rewrites nothing.
        assert sync.record("bob").startswith("scrypt$")
    finally:
        sync.close()

    async def again(store):
        assert await store.verify("alice", PW)       # the new record works
        assert not await store.verify("alice", b"wrong password")
    run(spec, again)


def test_a_record_changed_meanwhile_is_not_overwritten(spec):
    """The rewrite replaces the record it checked, not one written since (a
    password change by an operator wins)."""
    async def body(store):
        await store.create("alice", PW)
        assert not await store._replace("alice", "not the current record", "x")
        assert await store.verify("alice", PW)
    run(spec, body)


def test_unknown_user_costs_one_hash_against_an_argon2id_dummy(spec, monkeypatch):
    calls = []
    real = accounts_base.verify_password
    loop_threads = []

    def spy(password, record):
        calls.append((record, threading.current_thread()))
        return real(password, record)

    monkeypatch.setattr(accounts_base, "verify_password", spy)

    async def body(store):
        loop_threads.append(threading.current_thread())
        await store.create("alice", PW)
        return [await store.verify(name, b"wrong password")
                for name in ("alice", "nobody", "bad/name")]
    assert run(spec, body) == [False, False, False]
    assert len(calls) == 3
    (real_record, _), (dummy, _), (dummy_again, _) = calls
    assert dummy == dummy_again != real_record
    assert dummy.startswith("$argon2id$")
    assert dummy.split("$")[:4] == real_record.split("$")[:4]  # scheme, version, m/t/p
    # Off the event loop: every check ran in the hash pool.
    assert all(thread is not loop_threads[0] for _, thread in calls)
    assert all(thread.name.startswith("password-hash") for _, thread in calls)


def test_the_command_line_side_creates_the_same_records(spec):
    sync = make_sync_accounts(spec, "unused")
    try:
        sync.create("carol", b"carol-password")
        with pytest.raises(AccountExists):
            sync.create("carol", b"carol-password")
        with pytest.raises(ValueError):
            sync.create("carol", b"short")
        assert sync.names() == ["carol"]
    finally:
        sync.close()

    async def body(store):
        assert await store.verify("carol", b"carol-password")
    run(spec, body)
