"""Accounts in an embedded SQLite database (WAL), passwords hashed with scrypt.

Why this shape: scrypt is memory-hard on purpose (16 MiB, ~50 ms per hash at
the default cost), so it runs in a thread pool and never on the event loop;
SQLite calls are short but blocking, so they run on one dedicated thread per
process (one connection, no cross-thread sharing).  Several worker processes
open the same file: WAL lets readers proceed while one writer commits.

Hashes are stored as ``scrypt$N$r$p$salt_hex$hash_hex`` so the cost can be
raised later without invalidating existing accounts.  ``verify`` of an unknown
user hashes against a dummy record with the current cost, so the reply and
its timing are the same as for a wrong password.  ``EURECHAT_SCRYPT_N``
(a power of two) lowers the cost for test suites; never set it in production.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import logging
import os
import random
import sqlite3
import threading
import time
from typing import List, Optional

from ..names import MAX_PASSWORD, check_account, valid_username
from .interfaces import AccountExists, AccountStore, AccountsUnavailable

log = logging.getLogger("eurechat.directory.accounts")

__all__ = ["SqliteAccounts", "hash_password", "check_password", "default_cost",
           "SyncAccounts"]

DB_NAME = "directory.sqlite3"
_R, _P = 8, 1
_DKLEN = 32


def default_cost() -> int:
    """scrypt N: 2**14 unless ``EURECHAT_SCRYPT_N`` says otherwise (tests)."""
    text = os.environ.get("EURECHAT_SCRYPT_N")
    if text:
        n = int(text)
        if n < 2 or n & (n - 1):
            raise ValueError("EURECHAT_SCRYPT_N must be a power of two >= 2")
        return n
    return 1 << 14


def hash_password(password: bytes, n: Optional[int] = None) -> str:
    """A new salted scrypt record for ``password``."""
    n = n or default_cost()
    salt = os.urandom(16)
    digest = hashlib.scrypt(password, salt=salt, n=n, r=_R, p=_P,
                            maxmem=256 * n * _R + (1 << 20), dklen=_DKLEN)
    return f"scrypt${n}${_R}${_P}${salt.hex()}${digest.hex()}"


def check_password(password: bytes, record: str) -> bool:
    """Recompute and compare in constant time; False for a damaged record."""
    try:
        scheme, n_s, r_s, p_s, salt_hex, digest_hex = record.split("$")
        n, r, p = int(n_s), int(r_s), int(p_s)
        salt, expected = bytes.fromhex(salt_hex), bytes.fromhex(digest_hex)
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(password[:MAX_PASSWORD], salt=salt, n=n, r=r, p=p,
                            maxmem=256 * n * r + (1 << 20), dklen=len(expected))
    return hmac.compare_digest(digest, expected)


def init_db(db: sqlite3.Connection, statements, patience: float = 15.0) -> None:
    """Run set-up statements, retrying while another process holds the lock.

    Several workers open a fresh database at the same moment; switching to WAL
    needs a lock that SQLite reports as busy *without* waiting on its busy
    handler, so the retry is ours."""
    deadline = time.monotonic() + patience
    for statement in statements:
        while True:
            try:
                db.execute(statement)
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) \
                        or time.monotonic() > deadline:
                    raise
                time.sleep(0.01 + random.random() * 0.04)


class SyncAccounts:
    """The blocking SQLite part, used directly by the ``useradd``-style commands
    and through one thread by ``SqliteAccounts``."""

    def __init__(self, path: str) -> None:
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=10.0, isolation_level=None,
                                  check_same_thread=False)
        init_db(self.db, (
            "PRAGMA busy_timeout=10000",
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "CREATE TABLE IF NOT EXISTS accounts ("
            " name TEXT PRIMARY KEY, hash TEXT NOT NULL, created REAL NOT NULL)"))

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

    def delete(self, name: str) -> bool:
        return self.db.execute("DELETE FROM accounts WHERE name = ?", (name,)).rowcount > 0

    def names(self) -> List[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM accounts ORDER BY name")]

    def create(self, name: str, password: bytes) -> None:
        check_account(name, password)
        if self.record(name) is not None:
            raise AccountExists(name)
        self.insert(name, hash_password(password))


_hash_pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
_hash_pool_lock = threading.Lock()


def hash_pool() -> concurrent.futures.ThreadPoolExecutor:
    """One process-wide pool for scrypt (hashlib releases the GIL while hashing)."""
    global _hash_pool
    with _hash_pool_lock:
        if _hash_pool is None:
            _hash_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="scrypt")
        return _hash_pool


class SqliteAccounts(AccountStore):
    """``AccountStore`` on SQLite; every call is off the event loop."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sync: Optional[SyncAccounts] = None
        self._db_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="accounts-db")
        self._dummy: Optional[str] = None

    async def _db(self, fn, *args):
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._db_thread, fn, *args)
        except sqlite3.Error as exc:
            log.error("account database error: %s", exc)
            raise AccountsUnavailable(str(exc)) from exc

    async def _hash(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(hash_pool(), fn, *args)

    async def start(self) -> None:
        try:
            self._sync = await asyncio.get_running_loop().run_in_executor(
                self._db_thread, SyncAccounts, self.path)
        except (sqlite3.Error, OSError) as exc:
            raise AccountsUnavailable(f"cannot open {self.path}: {exc}") from exc
        self._dummy = await self._hash(hash_password, b"dummy password, never matches")

    async def close(self) -> None:
        if self._sync is not None:
            await self._db(self._sync.close)
            self._sync = None
        self._db_thread.shutdown(wait=False)

    async def create(self, name: str, password: bytes) -> None:
        check_account(name, password)
        assert self._sync is not None
        if await self._db(self._sync.record, name) is not None:
            raise AccountExists(name)
        record = await self._hash(hash_password, password)
        await self._db(self._sync.insert, name, record)

    async def verify(self, name: str, password: bytes) -> bool:
        assert self._sync is not None and self._dummy is not None
        record = await self._db(self._sync.record, name) if valid_username(name) else None
        ok = await self._hash(check_password, password, record or self._dummy)
        return ok and record is not None

    async def delete(self, name: str) -> bool:
        assert self._sync is not None
        return await self._db(self._sync.delete, name)

    async def names(self) -> List[str]:
        assert self._sync is not None
        return await self._db(self._sync.names)

