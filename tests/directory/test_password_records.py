"""Password records through the real command line (SPEC §5.3): ``useradd``
writes argon2id; an account whose record is still scrypt logs in through the
running directory (one worker and ``--workers 2``) and leaves with an
argon2id record; a wrong password changes nothing."""

from __future__ import annotations

import sqlite3

import pytest

from eurechat.directory.accounts.hashing import hash_scrypt
from eurechat.directory.accounts.sqlite import SyncAccounts
from support.client import FramedClient
from support.processes import run_directory, useradd


def record_of(data_dir, name: str) -> str:
    with sqlite3.connect(str(data_dir / "directory.sqlite3")) as db:
        return db.execute("SELECT hash FROM accounts WHERE name = ?", (name,)).fetchone()[0]


def test_useradd_writes_argon2id(tmp_path):
    useradd(str(tmp_path), "alice", "alice-password")
    assert record_of(tmp_path, "alice").startswith("$argon2id$v=19$")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_scrypt_account_logs_in_and_is_upgraded(tmp_path, workers):
    store = SyncAccounts(str(tmp_path / "directory.sqlite3"))
    try:
        store.insert("alice", hash_scrypt(b"alice-password", 16))
        store.insert("bob", hash_scrypt(b"bob-password", 16))
    finally:
        store.close()
    with run_directory("--workers", workers, data_dir=str(tmp_path)) as d:
        wrong = FramedClient(d.host, d.port)
        assert wrong.request("USER", "bob").type == "ACK"
        reply = wrong.request("PASS", "not-bobs-password")
        assert (reply.type, reply.text) == ("ERR", "authentication failed")
        wrong.close()
        client = FramedClient(d.host, d.port)
        client.login("alice", "alice-password")
        assert client.request("QUERY").type == "RESULT"
        client.close()
        assert record_of(tmp_path, "alice").startswith("$argon2id$")
        assert record_of(tmp_path, "bob").startswith("scrypt$")
        again = FramedClient(d.host, d.port)
        again.login("alice", "alice-password")  # with the new record
        again.close()
