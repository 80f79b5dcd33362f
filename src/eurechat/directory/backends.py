"""Choosing storage backends by URL, in one place.

The rest of the directory never imports a backend module: it calls these
factories with the text of ``--registry`` / ``--accounts`` / ``--throttle``.

=====================  ==============================================================
``--registry``         ``memory`` (one worker) | ``manager`` (the default with
                       ``--workers N>1``) | ``redis://HOST:PORT/DB``
``--accounts``         empty: SQLite ``directory.sqlite3`` in the data directory |
                       ``sqlite:///PATH`` | ``postgresql://...``
``--throttle``         empty: SQLite ``throttle.sqlite3`` in the data directory (shared
                       by the workers of one host) | ``memory`` | ``redis://...``
election               ``LocalElection`` unless the registry is Redis (then this
                       host's share of ``--checker-shards`` leases; 1: one lease)
=====================  ==============================================================

Distributed backends live in ``redis_registry.py`` / ``pg_accounts.py`` /
``lease.py`` and are imported lazily, only when their URL is used, so their
client libraries stay optional.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from ..paths import default_data_dir
from .interfaces import AccountStore, Election, Registry, Throttle

__all__ = ["make_registry", "make_accounts", "make_throttle", "make_election",
           "default_data_dir", "is_distributed"]


def is_distributed(spec: str) -> bool:
    return spec.startswith(("redis://", "rediss://", "unix://"))


def make_registry(spec: str, *, manager_address=None, authkey: Optional[bytes] = None,
                  follow: bool = True) -> Registry:
    """A registry client for this process.  ``manager`` needs the address and
    authkey of the supervisor's Manager (workers get them from the supervisor)."""
    if spec == "memory":
        from .registry import MemoryRegistry
        return MemoryRegistry()
    if spec == "manager":
        from .manager_registry import ManagerRegistry
        if manager_address is None:
            raise ValueError("--registry manager needs the supervisor's manager address")
        return ManagerRegistry(manager_address, authkey)
    if is_distributed(spec):
        from .redis_registry import RedisRegistry
        return RedisRegistry(spec, follow=follow)
    raise ValueError(f"unknown registry {spec!r}: memory, manager or redis://HOST:PORT/DB")


def make_accounts(spec: Optional[str], data_dir: str) -> AccountStore:
    if not spec:
        from .accounts import SqliteAccounts
        return SqliteAccounts(os.path.join(data_dir, "directory.sqlite3"))
    if spec.startswith("sqlite:///"):
        from .accounts import SqliteAccounts
        return SqliteAccounts(spec[len("sqlite://"):])
    if spec.startswith(("postgresql://", "postgres://")):
        from .pg_accounts import PostgresAccounts
        return PostgresAccounts(spec)
    raise ValueError(f"unknown accounts store {spec!r}: sqlite:///PATH or postgresql://...")


def make_throttle(spec: Optional[str], data_dir: str, *, limit: int = 5,
                  window: float = 60.0) -> Throttle:
    if not spec:
        from .throttle import SqliteThrottle
        return SqliteThrottle(os.path.join(data_dir, "throttle.sqlite3"), limit, window)
    if spec == "memory":
        from .throttle import MemoryThrottle
        return MemoryThrottle(limit, window)
    if is_distributed(spec):
        from .redis_registry import RedisThrottle
        return RedisThrottle(spec, limit=limit, window=window)
    raise ValueError(f"unknown throttle {spec!r}: memory or redis://...")


#: ``--checker-shards`` default: enough shards to spread the probes over up to
#: 16 hosts; one host alone holds them all, which is the single checker of old.
DEFAULT_CHECKER_SHARDS = 16


def make_election(registry_spec: str, lease: float = 10.0,
                  shards: int = DEFAULT_CHECKER_SHARDS) -> Election:
    """Who runs the checker: always this host, unless presence is shared via
    Redis; then this host's fair share of ``shards`` checker leases (one
    shard: the single lease key ``P:lease:checker`` that older versions use,
    so a mixed fleet still runs exactly one checker)."""
    if is_distributed(registry_spec):
        if shards > 1:
            from .lease import ShardedLease
            from .redis_registry import BUCKETS
            if shards > BUCKETS:
                logging.getLogger("eurechat.directory").warning(
                    "--checker-shards %d: using %d (a shard is at least one index bucket)",
                    shards, BUCKETS)
                shards = BUCKETS
            return ShardedLease(registry_spec, shards=shards, lease=lease)
        from .lease import RedisLease
        return RedisLease(registry_spec, lease=lease)
    from .checker import LocalElection
    return LocalElection()
