"""Failed-login throttling in SQLite, shared by the workers of one host.

Why SQLite: the throttle must be shared by every worker process of one
directory (an attacker would otherwise get N times the attempts by landing on
N workers), and the data directory is the one thing all workers already
share.  Failures are rare, so a small table with one row per key costs
nothing on the happy path; ``blocked`` is a single indexed read.  The rule
is ``base.count_failure``, applied inside one write transaction per failure
(so two workers counting the same key never lose a failure).  Times are
wall-clock seconds: every process of the host reads the same clock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import time
from typing import Callable, Optional, Sequence

from ..sqlitedb import open_db
from .base import Throttle, ThrottleUnavailable, count_failure

log = logging.getLogger("eurechat.directory.throttle")

__all__ = ["SqliteThrottle"]

SCHEMA = (
    # hits: the counted failures' times, space-separated (fewer than limit);
    # until: blocked before this time; last: the latest failure (for clean-up).
    "CREATE TABLE IF NOT EXISTS throttle_window ("
    " key TEXT PRIMARY KEY, hits TEXT NOT NULL, until REAL NOT NULL, last REAL NOT NULL)",
)


class SqliteThrottle(Throttle):
    """Shared by all processes that open the same file."""

    def __init__(self, path: str, limit: int = 5, window: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(limit, window)
        self.path = path
        self.clock = clock
        self._thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="throttle-db")
        self._db: Optional[sqlite3.Connection] = None

    def _open(self) -> None:
        self._db = open_db(self.path, SCHEMA)

    async def _run(self, fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        except (sqlite3.Error, OSError) as exc:
            log.error("throttle database error: %s", exc)
            raise ThrottleUnavailable(f"throttle database {self.path}: {exc}") from exc

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
        row = self._db.execute(
            f"SELECT 1 FROM throttle_window WHERE key IN ({marks}) AND until > ?",
            (*keys, self.clock())).fetchone()
        return row is not None

    def _failure(self, keys: Sequence[str]) -> None:
        assert self._db is not None
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            now = self.clock()  # read under the lock: failures are applied in time order
            for key in keys:
                row = db.execute("SELECT hits, until FROM throttle_window WHERE key = ?",
                                 (key,)).fetchone()
                earlier = tuple(float(t) for t in row[0].split()) if row else ()
                hits, until = count_failure(earlier, now, self.limit, self.window)
                if until is None:
                    until = row[1] if row else 0.0
                db.execute("INSERT OR REPLACE INTO throttle_window VALUES (?, ?, ?, ?)",
                           (key, " ".join(repr(t) for t in hits), until, now))
            db.execute("DELETE FROM throttle_window WHERE until <= ? AND last <= ?",
                       (now, now - self.window))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def blocked(self, keys: Sequence[str]) -> bool:
        if not keys:
            return False
        return await self._run(self._blocked, list(keys))

    async def failure(self, keys: Sequence[str]) -> None:
        if keys:
            await self._run(self._failure, list(keys))
