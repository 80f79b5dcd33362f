"""The accounts backup and restore that docs/deploy.md prescribes work on a live
directory: the Python online backup (the documented snippet itself, run with
this test's paths) copies every account while the directory serves, and the
restore steps (stop, copy over, delete -wal/-shm, start) bring them back."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys

from support.client import FramedClient
from support.processes import run_directory, useradd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "docs", "deploy.md")
LIVE = "/var/lib/eurechat/directory.sqlite3"


def documented_backup_script() -> str:
    """The ``python3 - <<'EOF'`` snippet of the Backups section."""
    text = open(DEPLOY, encoding="utf-8").read()
    section = text[text.index("## Backups"):]
    m = re.search(r"python3 - <<'EOF'\n(.*?)\nEOF\n", section, re.S)
    assert m, "docs/deploy.md lost its Python backup snippet"
    return m.group(1)


def names(path: str) -> list:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in db.execute("SELECT name FROM accounts ORDER BY name")]
    finally:
        db.close()


def test_documented_online_backup_and_restore(tmp_path):
    data = tmp_path / "data"
    backups = tmp_path / "backups"
    backups.mkdir()
    script = documented_backup_script()
    assert LIVE in script and "/var/backups/eurechat/" in script
    script = script.replace(LIVE, str(data / "directory.sqlite3")).replace(
        "/var/backups/eurechat/", f"{backups}/")
    with run_directory(data_dir=str(data)) as d:
        useradd(d.data_dir, "alice", "alice-password")
        useradd(d.data_dir, "bob", "bob-password-1")
        # While it serves: a login in flight does not stop the backup.
        with FramedClient(d.host, d.port) as client:
            client.login("alice", "alice-password")
            subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
        [backup] = list(backups.iterdir())
        assert names(str(backup)) == ["alice", "bob"]
        useradd(d.data_dir, "carol", "carol-password")  # after the backup: lost by the restore
    # Restore as documented: stopped, copied over, -wal and -shm removed.
    live = data / "directory.sqlite3"
    shutil.copy(backup, live)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(f"{live}{suffix}"):
            os.remove(f"{live}{suffix}")
    with run_directory(data_dir=str(data)) as d:
        with FramedClient(d.host, d.port) as client:
            client.login("bob", "bob-password-1")
        with FramedClient(d.host, d.port) as client:
            reply = client.request("USER", "carol")
            assert reply.type == "ACK"
            assert client.request("PASS", "carol-password").type == "ERR"
