"""Accounts in an embedded SQLite database (WAL), shared by the workers of a host.

SQLite calls are short but blocking, so they run on one dedicated thread per
process (one connection, no cross-thread sharing); hashing runs in the
process-wide hash pool (``hashing``).  Several worker processes open the same
file: WAL lets readers proceed while one writer commits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import time
from typing import List, Optional

from ..sqlitedb import open_db
from .base import (
    AccountExists,
    AccountsUnavailable,
    KeyChange,
    KeyKind,
    PasswordStore,
    SyncAccountStore,
)

log = logging.getLogger("eurechat.directory.accounts")

__all__ = ["SqliteAccounts", "SyncAccounts", "DB_NAME"]

#: The file name in the data directory.
DB_NAME = "directory.sqlite3"

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS accounts ("
    " name TEXT PRIMARY KEY, hash TEXT NOT NULL, created REAL NOT NULL)",
    # The enrolled key lives beside the account rather than in it, so a
    # database made before keys existed needs no migration.
    "CREATE TABLE IF NOT EXISTS account_keys ("
    " name TEXT PRIMARY KEY REFERENCES accounts(name) ON DELETE CASCADE,"
    " fingerprint TEXT NOT NULL, changed REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS key_history ("
    " id INTEGER PRIMARY KEY, name TEXT NOT NULL, fingerprint TEXT NOT NULL,"
    " kind TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS key_history_name ON key_history (name, id)",
)


class SyncAccounts(SyncAccountStore):
    """The blocking SQLite part, used directly by the ``useradd``-style commands
    and through one thread by ``SqliteAccounts``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.db = open_db(path, SCHEMA)

    def close(self) -> None:
        self.db.close()

    def record(self, name: str) -> Optional[str]:
        row = self.db.execute("SELECT hash FROM accounts WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def insert(self, name: str, record: str) -> None:
        try:
            self.db.execute("INSERT INTO accounts (name, hash, created) VALUES (?, ?, ?)",
                            (name, record, time.time()))
        except sqlite3.IntegrityError:
            raise AccountExists(name)

    def replace(self, name: str, old: str, new: str) -> bool:
        return self.db.execute("UPDATE accounts SET hash = ? WHERE name = ? AND hash = ?",
                               (new, name, old)).rowcount > 0

    def delete(self, name: str) -> bool:
        with self._transaction():
            self.db.execute("DELETE FROM account_keys WHERE name = ?", (name,))
            self.db.execute("DELETE FROM key_history WHERE name = ?", (name,))
            return self.db.execute("DELETE FROM accounts WHERE name = ?", (name,)).rowcount > 0

    def names(self) -> List[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM accounts ORDER BY name")]

    def key(self, name: str) -> Optional[str]:
        row = self.db.execute("SELECT fingerprint FROM account_keys WHERE name = ?",
                              (name,)).fetchone()
        return row[0] if row else None

    def change_key(self, name: str, expected: Optional[str], new: str, kind: KeyKind) -> bool:
        now = time.time()
        with self._transaction():
            if self.record(name) is None or self.key(name) != expected:
                return False
            self.db.execute(
                "INSERT INTO account_keys (name, fingerprint, changed) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET fingerprint = excluded.fingerprint,"
                " changed = excluded.changed", (name, new, now))
            self.db.execute("INSERT INTO key_history (name, fingerprint, kind, at) "
                            "VALUES (?, ?, ?, ?)", (name, new, KeyKind(kind).value, now))
            return True

    def key_history(self, name: str) -> List[KeyChange]:
        return [KeyChange(f, KeyKind(k), at) for f, k, at in self.db.execute(
            "SELECT fingerprint, kind, at FROM key_history WHERE name = ? ORDER BY id",
            (name,))]

    def _transaction(self):
        """BEGIN IMMEDIATE ... COMMIT: the read and the write of a key change
        happen under one write lock, across the worker processes too."""
        return _Immediate(self.db)


class _Immediate:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


class SqliteAccounts(PasswordStore):
    """``AccountStore`` on SQLite; every call is off the event loop."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sync: Optional[SyncAccounts] = None
        self._db_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="accounts-db")

    async def _db(self, fn, *args):
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._db_thread, fn, *args)
        except sqlite3.Error as exc:
            log.error("account database error: %s", exc)
            raise AccountsUnavailable(str(exc)) from exc

    async def start(self) -> None:
        try:
            self._sync = await asyncio.get_running_loop().run_in_executor(
                self._db_thread, SyncAccounts, self.path)
        except (sqlite3.Error, OSError) as exc:
            raise AccountsUnavailable(f"cannot open {self.path}: {exc}") from exc
        await self._prepare()

    async def close(self) -> None:
        if self._sync is not None:
            await self._db(self._sync.close)
            self._sync = None
        self._db_thread.shutdown(wait=False)

    async def _record(self, name: str) -> Optional[str]:
        assert self._sync is not None
        return await self._db(self._sync.record, name)

    async def _insert(self, name: str, record: str) -> None:
        assert self._sync is not None
        await self._db(self._sync.insert, name, record)

    async def _replace(self, name: str, old: str, new: str) -> bool:
        assert self._sync is not None
        return await self._db(self._sync.replace, name, old, new)

    async def delete(self, name: str) -> bool:
        assert self._sync is not None
        return await self._db(self._sync.delete, name)

    async def names(self) -> List[str]:
        assert self._sync is not None
        return await self._db(self._sync.names)

    async def key(self, name: str) -> Optional[str]:
        assert self._sync is not None
        return await self._db(self._sync.key, name)

    async def change_key(self, name: str, expected: Optional[str], new: str,
                         kind: KeyKind) -> bool:
        assert self._sync is not None
        return await self._db(self._sync.change_key, name, expected, new, kind)

    async def key_history(self, name: str) -> List[KeyChange]:
        assert self._sync is not None
        return await self._db(self._sync.key_history, name)
