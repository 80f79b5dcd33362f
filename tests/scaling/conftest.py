"""Fixtures of the scaling tests: one real ``redis-server`` and one throwaway
PostgreSQL cluster for the whole session (they start in about a second), a
clean keyspace / fresh database per test, and private servers for the tests
that kill them."""

from __future__ import annotations

from typing import Iterator

import pytest
import redis

from support.servers import PostgresCluster, RedisServer


@pytest.fixture(autouse=True)
def _cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test accounts hash with a small scrypt cost (production keeps 2**14)."""
    monkeypatch.setenv("EURECHAT_SCRYPT_N", "1024")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared server, emptied for this test."""
    if not redis_server.running:
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A private redis-server this test may kill and restart."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster().start()
    yield cluster
    cluster.close()


@pytest.fixture
def pg_dsn(pg_cluster: PostgresCluster) -> str:
    """A fresh, empty database on the shared cluster."""
    if not pg_cluster.running:
        pg_cluster.start()
    return pg_cluster.create_database()


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PostgresCluster]:
    """A private cluster for the tests of one module that kill and restart it."""
    cluster = PostgresCluster().start()
    yield cluster
    cluster.close()

