"""``backends.py`` builds every backend from its URL, each an instance of its
interface; elections decide what the checker probes; no backend module
imports the protocol session or the server."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from eurechat.directory import backends
from eurechat.directory.accounts.base import AccountStore, SyncAccountStore
from eurechat.directory.accounts.postgres import PostgresAccounts
from eurechat.directory.accounts.sqlite import SqliteAccounts, SyncAccounts
from eurechat.directory.backends import make_accounts, make_registry, make_throttle
from eurechat.directory.election.base import Election
from eurechat.directory.election.lease import RedisLease, ShardedLease
from eurechat.directory.election.local import LocalElection
from eurechat.directory.presence.base import BUCKETS, Registry, shard_of
from eurechat.directory.presence.manager import ManagerRegistry
from eurechat.directory.presence.memory import MemoryRegistry
from eurechat.directory.presence.redis import RedisRegistry
from eurechat.directory.throttle.base import Throttle
from eurechat.directory.throttle.memory import MemoryThrottle
from eurechat.directory.throttle.redis import RedisThrottle
from eurechat.directory.throttle.sqlite import SqliteThrottle
from eurechat.registration import Registration


@pytest.mark.parametrize("spec, options, cls", [
    ("memory", {}, MemoryRegistry),
    ("manager", {"manager_address": "/nonexistent", "authkey": b"k"}, ManagerRegistry),
    ("redis://127.0.0.1:6379/0", {}, RedisRegistry),
    ("unix:///tmp/redis.sock", {}, RedisRegistry),
])
def test_registries(spec, options, cls):
    registry = backends.make_registry(spec, **options)
    assert type(registry) is cls and isinstance(registry, Registry)


def test_a_supervisor_client_keeps_no_view():
    assert not backends.make_registry("manager", manager_address="/x", authkey=b"k",
                                      follow=False).subscribe
    assert not backends.make_registry("redis://127.0.0.1:6379/0", follow=False).follow


@pytest.mark.parametrize("spec", ["ftp://nope", "", "Memory"])
def test_unknown_registry(spec):
    with pytest.raises(ValueError, match="unknown registry"):
        backends.make_registry(spec)


def test_manager_needs_its_address():
    with pytest.raises(ValueError):
        backends.make_registry("manager")


def test_account_stores(tmp_path):
    default = backends.make_accounts(None, tmp_path)
    assert type(default) is SqliteAccounts and default.path == str(tmp_path / "directory.sqlite3")
    assert backends.make_accounts("sqlite:///tmp/y.sqlite3", tmp_path).path == "/tmp/y.sqlite3"
    pg = backends.make_accounts("postgresql://u@localhost/db", tmp_path)
    assert type(pg) is PostgresAccounts and isinstance(pg, AccountStore)
    with pytest.raises(ValueError, match="unknown accounts store"):
        backends.make_accounts("mysql://x", tmp_path)
    sync = backends.make_sync_accounts(None, tmp_path)
    try:
        assert type(sync) is SyncAccounts and isinstance(sync, SyncAccountStore)
        assert sync.path == str(tmp_path / "directory.sqlite3")
    finally:
        sync.close()


def test_throttles(tmp_path):
    made = [backends.make_throttle(None, tmp_path, limit=3, window=7.0),
            backends.make_throttle("memory", tmp_path, limit=3, window=7.0),
            backends.make_throttle("redis://127.0.0.1:6379/0", tmp_path, limit=3, window=7.0)]
    assert [type(t) for t in made] == [SqliteThrottle, MemoryThrottle, RedisThrottle]
    assert all(isinstance(t, Throttle) and (t.limit, t.window) == (3, 7.0) for t in made)
    with pytest.raises(ValueError, match="unknown throttle"):
        backends.make_throttle("sqlite:///x", tmp_path)


def test_elections(caplog):
    assert type(backends.make_election("memory")) is LocalElection
    assert type(backends.make_election("manager")) is LocalElection
    assert type(backends.make_election("redis://h:1/0", shards=1)) is RedisLease
    sharded = backends.make_election("redis://h:1/0", shards=16)
    assert type(sharded) is ShardedLease and sharded.shards == 16
    assert isinstance(sharded, Election)
    assert backends.make_election("redis://h:1/0", shards=BUCKETS + 1).shards == BUCKETS
    assert "--checker-shards" in caplog.text


def test_a_local_election_probes_everything():
    async def main():
        registry = MemoryRegistry()
        regs = [Registration(f"u{i}", "127.0.0.1", 2000 + i) for i in range(5)]
        for reg in regs:
            await registry.bind(reg)
        election = LocalElection()
        return await election.leading(), sorted(await election.snapshot(registry)), regs
    leading, got, regs = asyncio.run(main())
    assert leading and got == regs


def test_sharded_leases_split_any_registry_between_instances(redis_url):
    """Two instances on one Redis each hold half of the shards and, through
    ``Election.snapshot``, probe exactly their shards' registrations -- also of
    a registry without Redis's index (the interface's default)."""
    async def main():
        registry = MemoryRegistry()
        regs = [Registration(f"user{i:03d}", "127.0.0.1", 3000 + i) for i in range(80)]
        for reg in regs:
            await registry.bind(reg)
        one = ShardedLease(redis_url, shards=4, lease=2.0, holder="one")
        two = ShardedLease(redis_url, shards=4, lease=2.0, holder="two")
        await one.start()
        await two.start()
        try:
            for lease in (one, two):
                assert await lease.wait_for(lambda held: len(held) == 2, timeout=20)
            a, b = await one.snapshot(registry), await two.snapshot(registry)
            held_a = one.held()
        finally:
            await one.close()
            await two.close()
        return regs, a, b, held_a
    regs, a, b, held_a = asyncio.run(main())
    assert sorted(a + b) == regs and not set(a) & set(b)
    assert all(shard_of(r.name, 4) in held_a for r in a)


def test_no_backend_imports_the_session_or_the_server():
    code = ("import sys\n"
            "import eurechat.directory.backends\n"
            "for m in ('presence.memory', 'presence.manager', 'presence.redis', "
            "'accounts.sqlite', 'accounts.postgres', 'throttle.memory', 'throttle.sqlite', "
            "'throttle.redis', 'election.local', 'election.lease'):\n"
            "    __import__('eurechat.directory.' + m)\n"
            "bad = [m for m in ('eurechat.directory.session', 'eurechat.directory.server',"
            " 'eurechat.directory.app') if m in sys.modules]\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


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
