"""Keys bound to names, from the peer's side (SPEC §5.3), through the real
CLIs and real TLS: the first login with a password enrols the identity key
and keeps the certificate; later starts log in by the certificate without a
password (and so do reconnects); an expired certificate needs the password
again and is renewed; a replaced key is refused with one clear line, and
``--reset-key`` with the password enrols it; ``--rotate-key`` replaces the
key under the old one's authority."""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from eurechat.directory.accounts.base import KeyKind
from eurechat.directory.accounts.sqlite import DB_NAME, SqliteAccounts
from eurechat.peer import Peer
from eurechat.peer.credentials import Credentials, cert_path
from eurechat.peer.directory_client import PasswordNeeded
from eurechat.peer.identity import IDENTITY_FILE, load_identity_key
from eurechat.tls.enrolment import issue_user_certificate
from eurechat.tls.fingerprint import fingerprint
from support.peers import FAST, PASSWORD, Cluster, peer_cmd
from support.processes import test_env

NOW = datetime.datetime.now(datetime.timezone.utc)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def no_password_env():
    """No EURECHAT_PASSWORD, no --password-file, and stdin is a pipe: no way
    to get a password."""
    env = test_env(**FAST)
    env.pop("EURECHAT_PASSWORD", None)
    return env


def listed(name: str):
    return lambda e: any(u["name"] == name for u in e["users"])


def data_dir(cluster: Cluster, name: str) -> Path:
    return cluster.tmp / "peers" / name


def enrolled(cluster: Cluster, name: str):
    """(enrolled fingerprint, key history) in the directory's accounts."""
    async def read():
        store = SqliteAccounts(os.path.join(cluster.dir_data, DB_NAME))
        await store.start()
        try:
            return await store.key(name), await store.key_history(name)
        finally:
            await store.close()
    return asyncio.run(read())


def key_fingerprint(cluster: Cluster, name: str) -> str:
    return fingerprint(load_identity_key(data_dir(cluster, name)).public_key())


def run_peer(cluster: Cluster, name: str, *extra: str, env=None):
    """Run a peer to its end with ``/quit`` on stdin: (code, stdout, stderr)."""
    argv = peer_cmd() + ["--user", name, "--directory", cluster.hostport,
                         "--data-dir", str(data_dir(cluster, name)), "--json", *extra]
    res = subprocess.run(argv, input="/quit\n", capture_output=True, text=True, timeout=60,
                         env=env or cluster.env())
    return res.returncode, res.stdout, res.stderr


def enrol(cluster: Cluster, name: str) -> Credentials:
    alice = cluster.peer(name)
    assert alice.quit() == 0
    creds = Credentials.load(data_dir(cluster, name), name)
    assert creds is not None and creds.valid()
    return creds


def test_first_login_enrols_and_later_starts_need_no_password(cluster):
    alice = cluster.peer("alice", "--log-level", "info")
    creds = Credentials.load(data_dir(cluster, "alice"), "alice")
    assert creds is not None and creds.valid(), alice.p.stderr()
    fp = key_fingerprint(cluster, "alice")
    key, history = enrolled(cluster, "alice")
    assert key == fp == creds.fingerprint
    assert [h.kind for h in history] == [KeyKind.ENROL]
    assert "certified this peer's key" in alice.p.stderr()
    assert alice.quit() == 0

    # No password anywhere: the certificate logs in, and renews itself.
    alice = cluster.peer("alice", "--log-level", "info", register=False, env=no_password_env())
    alice.who_until(listed("alice"), "alice")
    assert "by the certificate" in alice.p.stderr()
    renewed = Credentials.load(data_dir(cluster, "alice"), "alice")
    assert renewed.cert.serial_number != creds.cert.serial_number
    assert renewed.fingerprint == fp
    # A restarted directory: the reconnect logs in by the certificate too.
    cluster.stop_directory()
    cluster.restart_directory()
    alice.who_until(listed("alice"), "alice")
    assert "error" not in [e["event"] for e in alice.events()]
    assert enrolled(cluster, "alice")[0] == fp
    assert alice.quit() == 0


def test_without_certificate_or_password_the_start_says_why(cluster):
    code, out, err = run_peer(cluster, "alice", env=no_password_env())
    assert code == 2
    assert "no password" in err and "Traceback" not in err


def test_an_expired_certificate_needs_the_password_again_then_is_renewed(cluster):
    creds = enrol(cluster, "alice")
    tls = Path(cluster.dir_data) / "tls"
    ca_key = serialization.load_pem_private_key((tls / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((tls / "ca.crt").read_bytes())
    expired = issue_user_certificate("alice", creds.key.public_key(), ca, ca_key,
                                     now=NOW - datetime.timedelta(days=8))
    cert_path(data_dir(cluster, "alice"), "alice").write_bytes(
        expired.public_bytes(serialization.Encoding.PEM) + creds.ca_pem)
    assert not Credentials.load(data_dir(cluster, "alice"), "alice").valid()

    code, out, err = run_peer(cluster, "alice", env=no_password_env())
    assert code == 2, err
    assert "no password" in err and "Traceback" not in err

    alice = cluster.peer("alice", register=False)      # with the password
    assert alice.quit() == 0
    renewed = Credentials.load(data_dir(cluster, "alice"), "alice")
    assert renewed.valid() and renewed.valid_until > NOW + datetime.timedelta(days=6)
    assert renewed.fingerprint == creds.fingerprint
    assert [h.kind for h in enrolled(cluster, "alice")[1]] == [KeyKind.ENROL]


def test_a_replaced_key_is_refused_and_reset_key_enrols_it(cluster):
    old = enrol(cluster, "alice")
    os.unlink(data_dir(cluster, "alice") / IDENTITY_FILE)

    # The password still logs in; the key is refused, said in one line.
    code, out, err = run_peer(cluster, "alice")
    new_fp = key_fingerprint(cluster, "alice")
    assert new_fp != old.fingerprint
    assert code == 9, err
    line = [x for x in err.splitlines() if "key mismatch" in x]
    assert len(line) == 1 and "Traceback" not in err
    assert "key mismatch: alice is enrolled with " + old.fingerprint in line[0]
    assert "--reset-key" in line[0] and new_fp in line[0]
    assert enrolled(cluster, "alice")[0] == old.fingerprint
    assert Credentials.load(data_dir(cluster, "alice"), "alice") is None

    code, out, err = run_peer(cluster, "alice", "--reset-key")
    assert code == 0, err
    assert "reset the enrolled key" in err
    key, history = enrolled(cluster, "alice")
    assert key == new_fp
    assert [h.kind for h in history] == [KeyKind.ENROL, KeyKind.RESET]
    creds = Credentials.load(data_dir(cluster, "alice"), "alice")
    assert creds is not None and creds.fingerprint == new_fp and creds.valid()

    # and from now on no password is needed
    alice = cluster.peer("alice", register=False, env=no_password_env())
    assert alice.quit() == 0


def test_rotate_key_replaces_the_key_under_the_old_certificate(cluster):
    old = enrol(cluster, "alice")
    code, out, err = run_peer(cluster, "alice", "--rotate-key", env=no_password_env())
    assert code == 0, err
    assert "rotated the identity key" in err
    new_fp = key_fingerprint(cluster, "alice")
    assert new_fp != old.fingerprint
    key, history = enrolled(cluster, "alice")
    assert key == new_fp
    assert [h.kind for h in history] == [KeyKind.ENROL, KeyKind.ROTATE]
    creds = Credentials.load(data_dir(cluster, "alice"), "alice")
    assert creds is not None and creds.fingerprint == new_fp
    # the new certificate logs in without a password
    alice = cluster.peer("alice", register=False, env=no_password_env())
    assert alice.quit() == 0


def test_rotate_key_without_a_certificate_is_a_usage_error(cluster):
    code, out, err = run_peer(cluster, "alice", "--rotate-key")
    assert code == 2 and "--rotate-key needs a valid certificate" in err


def test_peer_api_password_optional_with_a_certificate(cluster):
    directory = ("127.0.0.1", cluster.dir_port)
    where = data_dir(cluster, "carol")

    async def run():
        with pytest.raises(PasswordNeeded, match="no certificate yet"):
            async with Peer("carol", None, directory=directory, data_dir=where):
                pass
        async with Peer("carol", PASSWORD, directory=directory, data_dir=where,
                        register=True) as peer:
            assert peer.credentials is not None and peer.credentials.valid()
        async with Peer("carol", directory=directory, data_dir=where) as peer:
            assert peer.directory.by_certificate
            assert (await peer.directory.query("carol"))[0].name == "carol"

    asyncio.run(run())
