"""Accounts in PostgreSQL (psycopg 3, asyncio), for directories on several hosts.

Same records and the same create/verify flow as the embedded SQLite store
(``base.PasswordStore``, ``hashing``), so a record written by one store
verifies in the other and a cost change applies to both.  Hashing runs in
the process-wide hash pool, never on the event loop.

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
from typing import Any, List, Optional

import psycopg

from ...backoff import Backoff
from .base import (
    AccountExists,
    AccountsUnavailable,
    KeyChange,
    KeyKind,
    PasswordStore,
    SyncAccountStore,
)

log = logging.getLogger("eurechat.directory.pg_accounts")

__all__ = ["PostgresAccounts", "SyncPostgresAccounts"]

_SCHEMA_LOCK = 0x6575726563686174  # "eurechat": serialises concurrent first starts

_SCHEMA = """
CREATE TABLE IF NOT EXISTS eurechat_accounts (
    name    TEXT PRIMARY KEY,
    hash    TEXT NOT NULL,
    created TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS eurechat_account_keys (
    name        TEXT PRIMARY KEY REFERENCES eurechat_accounts(name) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    changed     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS eurechat_key_history (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    kind        TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS eurechat_key_history_name ON eurechat_key_history (name, id)
"""

# One statement (so one transaction in autocommit mode): the key moves only
# if it is still the expected one, and the history row is written only if
# it moved.
_CHANGE_KEY = """
WITH account AS (
    SELECT a.name FROM eurechat_accounts a
    LEFT JOIN eurechat_account_keys k ON k.name = a.name
    WHERE a.name = %(name)s AND k.fingerprint IS NOT DISTINCT FROM %(expected)s
    FOR UPDATE OF a
), moved AS (
    INSERT INTO eurechat_account_keys (name, fingerprint, changed)
    SELECT name, %(new)s, now() FROM account
    ON CONFLICT (name) DO UPDATE SET fingerprint = excluded.fingerprint, changed = now()
    WHERE eurechat_account_keys.fingerprint IS NOT DISTINCT FROM %(expected)s
    RETURNING name
)
INSERT INTO eurechat_key_history (name, fingerprint, kind)
SELECT name, %(new)s, %(kind)s FROM moved
RETURNING id
"""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class PostgresAccounts(PasswordStore):
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

    async def _run(self, sql: str, params: Any = (), fetch: str = "none"):
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
        await self._prepare()
        self._started = True

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._discard(conn)

    # -- AccountStore ------------------------------------------------------------
    async def _record(self, name: str) -> Optional[str]:
        row = await self._run("SELECT hash FROM eurechat_accounts WHERE name = %s",
                              (name,), "one")
        return row[0] if row else None

    async def _insert(self, name: str, record: str) -> None:
        row = await self._run(
            "INSERT INTO eurechat_accounts (name, hash) VALUES (%s, %s) "
            "ON CONFLICT (name) DO NOTHING RETURNING name", (name, record), "one")
        if row is None:
            raise AccountExists(name)

    async def _replace(self, name: str, old: str, new: str) -> bool:
        return bool(await self._run(
            "UPDATE eurechat_accounts SET hash = %s WHERE name = %s AND hash = %s",
            (new, name, old)))

    async def delete(self, name: str) -> bool:
        await self._run("DELETE FROM eurechat_key_history WHERE name = %s", (name,))
        return bool(await self._run("DELETE FROM eurechat_accounts WHERE name = %s", (name,)))

    async def names(self) -> List[str]:
        rows = await self._run("SELECT name FROM eurechat_accounts ORDER BY name COLLATE \"C\"", (), "all")
        return [r[0] for r in rows]

    async def key(self, name: str) -> Optional[str]:
        row = await self._run("SELECT fingerprint FROM eurechat_account_keys WHERE name = %s",
                              (name,), "one")
        return row[0] if row else None

    async def change_key(self, name: str, expected: Optional[str], new: str,
                         kind: KeyKind) -> bool:
        row = await self._run(_CHANGE_KEY, {"name": name, "expected": expected, "new": new,
                                            "kind": KeyKind(kind).value}, "one")
        return row is not None

    async def key_history(self, name: str) -> List[KeyChange]:
        rows = await self._run(
            "SELECT fingerprint, kind, extract(epoch FROM at) FROM eurechat_key_history "
            "WHERE name = %s ORDER BY id", (name,), "all")
        return [KeyChange(f, KeyKind(k), float(at)) for f, k, at in rows]


class SyncPostgresAccounts(SyncAccountStore):
    """The blocking side for ``eurechat-directory useradd/userdel/users
    --accounts postgresql://...``: one connection, the same table and the same
    records."""

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

    def record(self, name: str) -> Optional[str]:
        row = self.db.execute("SELECT hash FROM eurechat_accounts WHERE name = %s",
                              (name,)).fetchone()
        return row[0] if row else None

    def insert(self, name: str, record: str) -> None:
        row = self.db.execute(
            "INSERT INTO eurechat_accounts (name, hash) VALUES (%s, %s) "
            "ON CONFLICT (name) DO NOTHING RETURNING name", (name, record)).fetchone()
        if row is None:
            raise AccountExists(name)

    def delete(self, name: str) -> bool:
        with self.db.transaction():
            self.db.execute("DELETE FROM eurechat_key_history WHERE name = %s", (name,))
            return self.db.execute("DELETE FROM eurechat_accounts WHERE name = %s",
                                   (name,)).rowcount > 0

    def names(self) -> List[str]:
        return [r[0] for r in self.db.execute(
            'SELECT name FROM eurechat_accounts ORDER BY name COLLATE "C"')]
