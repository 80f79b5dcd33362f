"""Opening the SQLite files that the worker processes of one host share (the
accounts and the throttle), the same way for both."""

from __future__ import annotations

import os
import random
import sqlite3
import time
from typing import Iterable

__all__ = ["open_db", "init_db"]

#: Every connection: wait for a writer of another process instead of failing,
#: WAL (readers never wait for a writer), and one fsync per checkpoint.
PRAGMAS = ("PRAGMA busy_timeout=10000", "PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")


def init_db(db: sqlite3.Connection, statements: Iterable[str], patience: float = 15.0) -> None:
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


def open_db(path: str, schema: Iterable[str]) -> sqlite3.Connection:
    """Open (creating it and its directory, mode 0700) the database at
    ``path`` in autocommit mode, usable from any one thread at a time, with
    ``PRAGMAS`` and then ``schema`` applied."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    try:
        init_db(db, (*PRAGMAS, *schema))
    except BaseException:
        db.close()
        raise
    return db
