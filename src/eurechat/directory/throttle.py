"""Failed-login throttling (SPEC §2): 5 failures in 60 s per user or source
address block that key for 60 s.

Why SQLite: the throttle must be shared by every worker process of one
directory (an attacker would otherwise get N times the attempts by landing on
N workers), and the data directory is the one thing all workers already
share.  Failures are rare, so a small table with one row per key costs
nothing on the happy path; ``blocked`` is a single indexed read.  A
distributed deployment swaps in a Redis throttle behind the same interface.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sqlite3
import time
from typing import Dict, List, Optional, Sequence

from .accounts import init_db
from .interfaces import AccountsUnavailable, Throttle

log = logging.getLogger("eurechat.directory.throttle")

__all__ = ["SqliteThrottle", "MemoryThrottle"]


class MemoryThrottle(Throttle):
    """One process only (tests, single worker without a data directory)."""

    def __init__(self, limit: int = 5, window: float = 60.0, clock=time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._state: Dict[str, List[float]] = {}  # key -> [count, window_start, blocked_until]

    async def blocked(self, keys: Sequence[str]) -> bool:
        now = self.clock()
        return any(self._state.get(k, (0, 0, 0))[2] > now for k in keys)

    async def failure(self, keys: Sequence[str]) -> None:
        now = self.clock()
        for key in keys:
            count, start, until = self._state.get(key, [0, now, 0.0])
            if now - start > self.window:
                count, start = 0, now
            count += 1
            if count >= self.limit:
                until = now + self.window
            self._state[key] = [count, start, until]
        if len(self._state) > 100_000:  # forget stale keys
            self._state = {k: v for k, v in self._state.items()
                           if now - v[1] <= self.window or v[2] > now}


class SqliteThrottle(Throttle):
    """Shared by all processes that open the same file."""

    def __init__(self, path: str, limit: int = 5, window: float = 60.0) -> None:
        self.path, self.limit, self.window = path, limit, window
        self._thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="throttle-db")
        self._db: Optional[sqlite3.Connection] = None

    def _open(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o700, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                             check_same_thread=False)
        init_db(db, (
            "PRAGMA busy_timeout=10000",
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "CREATE TABLE IF NOT EXISTS throttle ("
            " key TEXT PRIMARY KEY, count INTEGER NOT NULL,"
            " start REAL NOT NULL, until REAL NOT NULL)"))
        self._db = db

    async def _run(self, fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        except sqlite3.Error as exc:
            log.error("throttle database error: %s", exc)
            raise AccountsUnavailable(str(exc)) from exc

    async def start(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._thread.shutdown(wait=False)

    def _blocked(self, keys: Sequence[str]) -> bool:
        assert self._db is not None
        marks = ",".join("?" * len(keys))
        row = self._db.execute(f"SELECT 1 FROM throttle WHERE key IN ({marks}) AND until > ?",
                               (*keys, time.time())).fetchone()
        return row is not None

    def _failure(self, keys: Sequence[str]) -> None:
        assert self._db is not None
        now = time.time()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for key in keys:
                row = db.execute("SELECT count, start, until FROM throttle WHERE key = ?",
                                 (key,)).fetchone()
                count, start, until = row if row else (0, now, 0.0)
                if now - start > self.window:
                    count, start = 0, now
                count += 1
                if count >= self.limit:
                    until = now + self.window
                db.execute("INSERT OR REPLACE INTO throttle VALUES (?, ?, ?, ?)",
                           (key, count, start, until))
            db.execute("DELETE FROM throttle WHERE start < ? AND until < ?",
                       (now - 10 * self.window, now))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def blocked(self, keys: Sequence[str]) -> bool:
        return await self._run(self._blocked, list(keys))

    async def failure(self, keys: Sequence[str]) -> None:
        await self._run(self._failure, list(keys))
