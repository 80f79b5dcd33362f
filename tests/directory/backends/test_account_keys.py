"""Every account store keeps one enrolled key per user and the history of its
changes (SPEC §5.3), in SQLite and in PostgreSQL alike: a change happens only
against the key it was decided on, so two racing requests cannot both win."""

from __future__ import annotations

import asyncio

import pytest

from eurechat.directory.accounts.base import KeyKind
from eurechat.directory.backends import make_accounts, make_sync_accounts

PW = b"alice-password"
K1, K2, K3 = ("sha256:" + c * 43 for c in "ABC")


@pytest.fixture(params=["sqlite", "postgres"])
def spec(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/accounts.sqlite3"
    return request.getfixturevalue("pg_dsn")


def run(spec: str, body):
    async def main():
        store = make_accounts(spec, "unused")
        await store.start()
        try:
            return await body(store)
        finally:
            await store.close()
    return asyncio.run(main())


def test_an_account_starts_without_a_key(spec):
    async def body(store):
        await store.create("alice", PW)
        assert await store.key("alice") is None
        assert await store.key_history("alice") == []
        assert await store.key("nobody") is None
    run(spec, body)


def test_enrol_rotate_reset_are_kept_in_order_with_their_kind(spec):
    async def body(store):
        await store.create("alice", PW)
        assert await store.change_key("alice", None, K1, KeyKind.ENROL)
        assert await store.change_key("alice", K1, K2, KeyKind.ROTATE)
        assert await store.change_key("alice", K2, K3, KeyKind.RESET)
        assert await store.key("alice") == K3
        history = await store.key_history("alice")
        assert [(h.fingerprint, h.kind) for h in history] == [
            (K1, KeyKind.ENROL), (K2, KeyKind.ROTATE), (K3, KeyKind.RESET)]
        assert history[0].at <= history[1].at <= history[2].at
    run(spec, body)


def test_a_change_against_a_stale_key_is_refused_and_leaves_no_trace(spec):
    async def body(store):
        await store.create("alice", PW)
        assert await store.change_key("alice", None, K1, KeyKind.ENROL)
        assert not await store.change_key("alice", None, K2, KeyKind.ENROL)
        assert not await store.change_key("alice", K3, K2, KeyKind.ROTATE)
        assert await store.key("alice") == K1
        assert len(await store.key_history("alice")) == 1
    run(spec, body)


def test_no_key_for_an_account_that_does_not_exist(spec):
    async def body(store):
        assert not await store.change_key("ghost", None, K1, KeyKind.ENROL)
        assert await store.key("ghost") is None
    run(spec, body)


def test_of_racing_enrolments_exactly_one_wins(spec):
    async def body(store):
        await store.create("alice", PW)
        wins = await asyncio.gather(*(
            store.change_key("alice", None, k, KeyKind.ENROL) for k in (K1, K2, K3)))
        assert sum(wins) == 1
        winner = [k for k, w in zip((K1, K2, K3), wins) if w][0]
        assert await store.key("alice") == winner
        assert [h.fingerprint for h in await store.key_history("alice")] == [winner]
    run(spec, body)


def test_keys_survive_a_restart_and_go_with_the_account(spec):
    async def enrol(store):
        await store.create("alice", PW)
        await store.change_key("alice", None, K1, KeyKind.ENROL)
    run(spec, enrol)

    async def check(store):
        assert await store.key("alice") == K1
    run(spec, check)

    sync = make_sync_accounts(spec, "unused")
    try:
        assert sync.delete("alice")
    finally:
        sync.close()

    async def gone(store):
        assert await store.key("alice") is None
        assert await store.key_history("alice") == []
        await store.create("alice", PW)  # a new account of the same name starts clean
        assert await store.key("alice") is None
        assert await store.key_history("alice") == []
    run(spec, gone)
