"""Accounts in PostgreSQL (psycopg 3, asyncio), for directories on several hosts.

Same records as the embedded SQLite store -- the hashing helpers are imported
from :mod:`eurechat.directory.accounts`, not copied, so a hash written by one
store verifies in the other and a cost change applies to both.  scrypt runs in
the same process-wide thread pool, never on the event loop.

Connections: a small pool of autocommit connections opened on demand.  A
connection that fails is thrown away and the request gets
:class:`AccountsUnavailable` (the session answers ``directory unavailable,
retry later`` and stays open).  Reconnecting backs off exponentially, so a
dead database is not hammered by every login; the first request after the
backoff tries again, and service resumes by itself once PostgreSQL is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import List, Optional

import psycopg

from ..backoff import Backoff
from ..names import check_account, valid_username
from .accounts import check_password, hash_password, hash_pool
from .interfaces import AccountExists, AccountStore, AccountsUnavailable

log = logging.getLogger("eurechat.directory.pg_accounts")

__all__ = ["PostgresAccounts", "SyncPostgresAccounts"]

_SCHEMA_LOCK = 0x6575726563686174  # "eurechat": serialises concurrent first starts

_SCHEMA = """
CREATE TABLE IF NOT EXISTS eurechat_accounts (
    name    TEXT PRIMARY KEY,
    hash    TEXT NOT NULL,
    created TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class PostgresAccounts(AccountStore):
    """``AccountStore`` on PostgreSQL; see the module doc for failure handling."""

    def __init__(self, dsn: str, *, pool_size: int = 4, op_timeout: float = 10.0,
                 connect_timeout: int = 3, max_backoff: float = 2.0) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.op_timeout = op_timeout
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self._idle: List[psycopg.AsyncConnection] = []
        self._slots: Optional[asyncio.Semaphore] = None
        self._dummy: Optional[str] = None
        self._backoff = Backoff(min(0.1, max_backoff), max_backoff)
        self._retry_at = 0.0
        self._down = False
        self._started = False  # before start() succeeds, failures are the caller's to report

    # -- connections ---------------------------------------------------------
    async def _connect(self) -> psycopg.AsyncConnection:
        now = time.monotonic()
        if now < self._retry_at:
            raise AccountsUnavailable("account database unreachable (backing off)")
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=self.connect_timeout,
                options="-c statement_timeout=5000")
        except psycopg.Error as exc:
            self._retry_at = time.monotonic() + self._backoff.next()
            if not self._down and self._started:
                log.warning("account database unreachable: %s", _one_line(exc))
            self._down = self._started
            raise AccountsUnavailable(f"cannot reach PostgreSQL: {_one_line(exc)}") from exc
        if self._down:
            log.warning("account database reachable again")
        self._down = False
        self._backoff.reset()
        self._retry_at = 0.0
        return conn

    async def _run(self, sql: str, params: tuple = (), fetch: str = "none"):
        """Run one statement on a pooled connection; any connection trouble
        becomes AccountsUnavailable and the connection is discarded."""
        if self._slots is None:
            raise AccountsUnavailable("account store not started")
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                cur = await asyncio.wait_for(conn.execute(sql, params), self.op_timeout)
                if fetch == "one":
                    result = await cur.fetchone()
                elif fetch == "all":
                    result = await cur.fetchall()
                else:
                    result = cur.rowcount
            except psycopg.errors.UniqueViolation:
                self._idle.append(conn)
                raise
            except (psycopg.Error, OSError, asyncio.TimeoutError) as exc:
                await self._discard(conn)
                if not self._down:
                    log.warning("account database error: %s", _one_line(exc))
                raise AccountsUnavailable(_one_line(exc)) from exc
            except BaseException:
                await self._discard(conn)
                raise
            self._idle.append(conn)
            return result

    @staticmethod
    async def _discard(conn: psycopg.AsyncConnection) -> None:
        try:
            await conn.close()
        except Exception:
            pass

    # -- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self.pool_size)
        conn = await self._connect()
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                await conn.execute(_SCHEMA)
        except psycopg.Error as exc:
            await self._discard(conn)
            raise AccountsUnavailable(f"cannot prepare the accounts table: {_one_line(exc)}")
        self._idle.append(conn)
        self._dummy = await self._hash(hash_password, b"dummy password, never matches")
        self._started = True

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._discard(conn)

    @staticmethod
    async def _hash(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(hash_pool(), fn, *args)

    # -- AccountStore ------------------------------------------------------------
    async def create(self, name: str, password: bytes) -> None:
        check_account(name, password)
        # Refuse a taken name before paying for a hash.
        if await self._run("SELECT 1 FROM eurechat_accounts WHERE name = %s", (name,), "one"):
            raise AccountExists(name)
        record = await self._hash(hash_password, password)
        row = await self._run(
            "INSERT INTO eurechat_accounts (name, hash) VALUES (%s, %s) "
            "ON CONFLICT (name) DO NOTHING RETURNING name", (name, record), "one")
        if row is None:
            raise AccountExists(name)

    async def verify(self, name: str, password: bytes) -> bool:
        assert self._dummy is not None, "start() first"
        record = None
        if valid_username(name):
            row = await self._run("SELECT hash FROM eurechat_accounts WHERE name = %s",
                                  (name,), "one")
            record = row[0] if row else None
        ok = await self._hash(check_password, password, record or self._dummy)
        return ok and record is not None

    async def delete(self, name: str) -> bool:
        return bool(await self._run("DELETE FROM eurechat_accounts WHERE name = %s", (name,)))

    async def names(self) -> List[str]:
        rows = await self._run("SELECT name FROM eurechat_accounts ORDER BY name COLLATE \"C\"", (), "all")
        return [r[0] for r in rows]


class SyncPostgresAccounts:
    """The blocking twin for ``eurechat-directory useradd/userdel/users
    --accounts postgresql://...`` (the same shape as ``accounts.SyncAccounts``):
    one connection, the same table and the same hash records."""

    def __init__(self, dsn: str, connect_timeout: int = 5) -> None:
        try:
            self.db = psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout)
            with self.db.transaction():
                self.db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                self.db.execute(_SCHEMA)
        except psycopg.Error as exc:
            raise AccountsUnavailable(f"cannot reach PostgreSQL: {_one_line(exc)}") from exc

    def close(self) -> None:
        self.db.close()

    def create(self, name: str, password: bytes) -> None:
        check_account(name, password)
        if self.db.execute("SELECT 1 FROM eurechat_accounts WHERE name = %s",
                           (name,)).fetchone():
            raise AccountExists(name)
        row = self.db.execute(
            "INSERT INTO eurechat_accounts (name, hash) VALUES (%s, %s) "
            "ON CONFLICT (name) DO NOTHING RETURNING name",
            (name, hash_password(password))).fetchone()
        if row is None:
            raise AccountExists(name)

    def delete(self, name: str) -> bool:
        return self.db.execute("DELETE FROM eurechat_accounts WHERE name = %s",
                               (name,)).rowcount > 0

    def names(self) -> List[str]:
        return [r[0] for r in self.db.execute(
            'SELECT name FROM eurechat_accounts ORDER BY name COLLATE "C"')]
