"""Fixtures of the directory tests: a running directory with two accounts;
one real ``redis-server`` and one throwaway PostgreSQL cluster for the whole
session (they start in about a second), a clean keyspace / fresh database per
test, and private servers for the tests that kill them."""

from __future__ import annotations

from typing import Iterator

import pytest
import redis

from support.processes import run_directory, useradd
from support.servers import PostgresCluster, RedisServer

PASSWORDS = {"corrado": "corrado-password", "bob": "bob-password-1"}


@pytest.fixture(scope="module")
def passwords():
    return dict(PASSWORDS)


@pytest.fixture(scope="module")
def accounts_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("directory-data"))
    for name, password in PASSWORDS.items():
        useradd(data_dir, name, password)
    return data_dir


@pytest.fixture(scope="module")
def directory(accounts_dir):
    """One single-worker directory shared by a module's tests (bind policy own).
    The throttle limit is raised so wrong-password tests do not lock out the
    loopback address for the rest of the module."""
    with run_directory("--check-interval", "3600", "--throttle-limit", "1000",
                       data_dir=accounts_dir) as d:
        yield d


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

