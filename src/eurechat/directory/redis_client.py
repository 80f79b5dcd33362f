"""The Redis client every Redis backend uses (presence, throttle, leases), and
what a lost Redis looks like through redis-py."""

from __future__ import annotations

from typing import Tuple

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = ["redis_client", "REDIS_DOWN"]

#: What a lost or refused Redis looks like through redis-py.
REDIS_DOWN: Tuple[type, ...] = (redis_errors.ConnectionError, redis_errors.TimeoutError,
                                redis_errors.BusyLoadingError, OSError)


def redis_client(url: str, *, socket_timeout: float = 5.0, retries: int = 1,
                 max_connections: int = 64) -> Redis:
    """A client that fails fast on a dead server: one immediate retry (a pooled
    connection that died with a restarted server), then the error.  Callers
    turn the error into ``ERR directory unavailable, retry later``; waiting
    here would only hold the session hostage.

    The pool is a *blocking* one: a burst (a thousand removals from one
    checker round, a login storm) queues for one of ``max_connections``
    connections instead of failing or opening thousands of sockets."""
    pool = BlockingConnectionPool.from_url(
        url, decode_responses=True, socket_timeout=socket_timeout,
        socket_connect_timeout=2.0, retry=Retry(NoBackoff(), retries),
        health_check_interval=0, max_connections=max_connections, timeout=5.0)
    return Redis.from_pool(pool)
