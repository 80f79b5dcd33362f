"""The peer's identity key (``identity.key``) and its listener's TLS context."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import threading

import pytest

from eurechat.peer.identity import IdentityError, listener_context, load_identity_key
from eurechat.tls.fingerprint import fingerprint, fingerprint_of_cert


def test_created_once_private_and_kept(tmp_path):
    key = load_identity_key(tmp_path / "data")
    path = tmp_path / "data" / "identity.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = load_identity_key(tmp_path / "data")
    assert fingerprint(again.public_key()) == fingerprint(key.public_key())
    assert [p.name for p in path.parent.iterdir()] == ["identity.key"]


def test_two_peers_starting_together_get_one_key(tmp_path):
    keys, barrier = [], threading.Barrier(8)

    def start():
        barrier.wait()
        keys.append(fingerprint(load_identity_key(tmp_path).public_key()))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys) == 8


def test_a_key_readable_by_others_is_made_private(tmp_path):
    load_identity_key(tmp_path)
    os.chmod(tmp_path / "identity.key", 0o644)
    load_identity_key(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / "identity.key").st_mode) == 0o600


def test_a_damaged_key_is_one_clear_error(tmp_path):
    (tmp_path / "identity.key").write_text("not a key\n")
    with pytest.raises(IdentityError, match="not an unencrypted PEM private key"):
        load_identity_key(tmp_path)


def test_the_listener_presents_a_certificate_of_the_identity_key(tmp_path):
    key = load_identity_key(tmp_path)
    server_ctx = listener_context(key, tmp_path)
    lsock = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve():
        conn, _ = lsock.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"x")
            done.wait(10)

    threading.Thread(target=serve, daemon=True).start()
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(lsock.getsockname(), timeout=10) as raw:
        with client.wrap_socket(raw) as tls:
            assert tls.recv(1) == b"x" and tls.version() == "TLSv1.3"
            der = tls.getpeercert(binary_form=True)
    done.set()
    lsock.close()
    assert fingerprint_of_cert(der) == fingerprint(key.public_key())
