"""Building the directory's backends from their URLs: the one place that knows
which class serves which ``--registry`` / ``--accounts`` / ``--throttle``.

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

Every backend is reached through its interface (``presence.base.Registry``,
``accounts.base.AccountStore``, ``throttle.base.Throttle``,
``election.base.Election``); the server, the workers, the supervisor and the
command line get them only from here.  The modules of the distributed
backends are imported only when their URL is used, so their client
libraries (redis, psycopg) stay optional.
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Union

from ..paths import default_data_dir
from .accounts.base import AccountStore, SyncAccountStore
from .election.base import Election
from .presence.base import BUCKETS, Registry
from .throttle.base import Throttle

__all__ = ["make_registry", "make_accounts", "make_sync_accounts", "make_throttle",
           "make_election", "default_data_dir", "is_distributed", "is_postgres", "check_registry",
           "check_accounts", "check_throttle", "DEFAULT_CHECKER_SHARDS"]

log = logging.getLogger("eurechat.directory.backends")

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
ACCOUNT_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")
PG_SCHEMES = ("postgresql://", "postgres://")

#: ``--checker-shards`` default: enough shards to spread the probes over up to
#: 16 hosts; one host alone holds them all.
DEFAULT_CHECKER_SHARDS = 16


def is_distributed(spec: str) -> bool:
    """Whether ``spec`` names Redis (presence or throttle shared by several hosts)."""
    return spec.startswith(REDIS_SCHEMES)


def is_postgres(spec: str) -> bool:
    """Whether ``spec`` names PostgreSQL (accounts shared by several hosts)."""
    return spec.startswith(PG_SCHEMES)


def check_registry(spec: str) -> str:
    """``spec`` if it names a registry, else ValueError with the choices."""
    if spec in ("memory", "manager") or is_distributed(spec):
        return spec
    raise ValueError(f"unknown registry {spec!r}: memory, manager or redis://HOST:PORT/DB")


def check_accounts(spec: str) -> str:
    """``spec`` if it names an account store (empty: the default), else ValueError."""
    if spec and not spec.startswith(ACCOUNT_SCHEMES):
        raise ValueError(f"unknown accounts store {spec!r}: sqlite:///PATH or postgresql://...")
    return spec


def check_throttle(spec: str) -> str:
    """``spec`` if it names a throttle store, else ValueError."""
    if spec != "memory" and not is_distributed(spec):
        raise ValueError(f"unknown throttle {spec!r}: memory or redis://HOST:PORT/DB")
    return spec


def make_registry(spec: str, *, manager_address=None, authkey: Optional[bytes] = None,
                  follow: bool = True) -> Registry:
    """A registry client for this process.  ``manager`` needs the address and
    authkey of the supervisor's Manager.  ``follow=False``: a client that
    writes and takes snapshots but keeps no read view (the supervisor's)."""
    check_registry(spec)
    if spec == "memory":
        from .presence.memory import MemoryRegistry
        return MemoryRegistry()
    if spec == "manager":
        from .presence.manager import ManagerRegistry
        if manager_address is None:
            raise ValueError("--registry manager needs the supervisor's manager address")
        return ManagerRegistry(manager_address, authkey, subscribe=follow)
    from .presence.redis import RedisRegistry
    return RedisRegistry(spec, follow=follow)


def _sqlite_path(spec: Optional[str], data_dir: Union[str, os.PathLike]) -> str:
    from .accounts.sqlite import DB_NAME
    if spec:
        return spec[len("sqlite://"):]
    return os.path.join(data_dir, DB_NAME)


def make_accounts(spec: Optional[str], data_dir: Union[str, os.PathLike]) -> AccountStore:
    """The account store of ``--accounts`` (empty: SQLite in ``data_dir``)."""
    check_accounts(spec or "")
    if spec and is_postgres(spec):
        from .accounts.postgres import PostgresAccounts
        return PostgresAccounts(spec)
    from .accounts.sqlite import SqliteAccounts
    return SqliteAccounts(_sqlite_path(spec, data_dir))


def make_sync_accounts(spec: Optional[str],
                       data_dir: Union[str, os.PathLike, None] = None) -> SyncAccountStore:
    """The blocking side of the same store, for ``useradd``/``userdel``/``users``
    (opened here: raises AccountsUnavailable when it cannot be reached)."""
    check_accounts(spec or "")
    if spec and is_postgres(spec):
        from .accounts.postgres import SyncPostgresAccounts
        return SyncPostgresAccounts(spec)
    from .accounts.sqlite import SyncAccounts
    return SyncAccounts(_sqlite_path(spec, data_dir or default_data_dir()))


def make_throttle(spec: Optional[str], data_dir: Union[str, os.PathLike], *, limit: int = 5,
                  window: float = 60.0) -> Throttle:
    """The failed-login throttle of ``--throttle`` (empty: SQLite in ``data_dir``)."""
    if not spec:
        from .throttle.sqlite import SqliteThrottle
        return SqliteThrottle(os.path.join(data_dir, "throttle.sqlite3"), limit, window)
    check_throttle(spec)
    if spec == "memory":
        from .throttle.memory import MemoryThrottle
        return MemoryThrottle(limit, window)
    from .throttle.redis import RedisThrottle
    return RedisThrottle(spec, limit=limit, window=window)


def make_election(registry_spec: str, lease: float = 10.0,
                  shards: int = DEFAULT_CHECKER_SHARDS) -> Election:
    """Who runs the checker: always this host, unless presence is shared via
    Redis; then this host's fair share of ``shards`` checker leases (one
    shard: the single lease key ``P:lease:checker``)."""
    if not is_distributed(registry_spec):
        from .election.local import LocalElection
        return LocalElection()
    from .election.lease import RedisLease, ShardedLease
    if shards <= 1:
        return RedisLease(registry_spec, lease=lease)
    if shards > BUCKETS:
        log.warning("--checker-shards %d: using %d (a shard is at least one index bucket)",
                    shards, BUCKETS)
        shards = BUCKETS
    return ShardedLease(registry_spec, shards=shards, lease=lease)
