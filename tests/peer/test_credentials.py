"""The peer's certificate store (``peer.credentials``): what it keeps, what it
refuses to present, and that its TLS contexts authenticate both ends."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from eurechat.peer.credentials import (
    Credentials,
    CredentialsError,
    cert_path,
    certificate_request,
    check_chain,
    save_chain,
    write_key,
)
from eurechat.peer.identity import IDENTITY_FILE, load_identity_key
from eurechat.tls.enrolment import issue_user_certificate, load_request, user_of
from eurechat.tls.fingerprint import fingerprint
from support.certs import make_ca

NOW = datetime.datetime.now(datetime.timezone.utc)


def chain_for(ca, name, public_key, now=None, lifetime=datetime.timedelta(days=7)) -> bytes:
    cert = issue_user_certificate(name, public_key, ca.cert, ca.key, now=now, lifetime=lifetime)
    return cert.public_bytes(Encoding.PEM) + ca.cert_pem


def test_request_carries_the_identity_key_and_the_directory_accepts_it(tmp_path):
    key = load_identity_key(tmp_path)
    req = load_request(certificate_request(key))
    assert req.fingerprint == fingerprint(key.public_key())


def test_no_certificate_no_credentials(tmp_path):
    assert Credentials.load(tmp_path, "alice") is None


def test_saved_chain_loads_per_user_private_and_valid(tmp_path):
    ca = make_ca()
    key = load_identity_key(tmp_path)
    save_chain(tmp_path, "alice", chain_for(ca, "alice", key.public_key()))
    creds = Credentials.load(tmp_path, "alice")
    assert creds is not None and user_of(creds.cert) == "alice"
    assert creds.fingerprint == fingerprint(key.public_key())
    assert creds.ca_fingerprint == fingerprint(ca.key.public_key())
    assert creds.valid()
    assert creds.valid_until > NOW + datetime.timedelta(days=6)
    assert stat.S_IMODE(os.stat(cert_path(tmp_path, "alice")).st_mode) == 0o600
    # another user of the same data directory has no certificate of its own
    assert Credentials.load(tmp_path, "bob") is None
    # nothing half-written is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice.crt", IDENTITY_FILE]


def test_expired_or_nearly_expired_is_not_valid(tmp_path):
    ca = make_ca()
    key = load_identity_key(tmp_path)
    save_chain(tmp_path, "alice", chain_for(ca, "alice", key.public_key(),
                                            now=NOW - datetime.timedelta(days=8)))
    creds = Credentials.load(tmp_path, "alice")
    assert creds is not None and not creds.valid()
    save_chain(tmp_path, "alice", chain_for(ca, "alice", key.public_key(),
                                            lifetime=datetime.timedelta(seconds=30)))
    assert not Credentials.load(tmp_path, "alice").valid()     # inside the margin
    save_chain(tmp_path, "alice", chain_for(ca, "alice", key.public_key()))
    assert Credentials.load(tmp_path, "alice").valid()


def test_a_replaced_key_makes_the_certificate_unusable(tmp_path):
    ca = make_ca()
    key = load_identity_key(tmp_path)
    save_chain(tmp_path, "alice", chain_for(ca, "alice", key.public_key()))
    os.unlink(tmp_path / IDENTITY_FILE)
    load_identity_key(tmp_path)          # a new key, as after a loss
    assert Credentials.load(tmp_path, "alice") is None


def test_write_key_replaces_the_identity_key(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ed25519
    load_identity_key(tmp_path)
    new = ed25519.Ed25519PrivateKey.generate()
    write_key(tmp_path, new)
    assert fingerprint(load_identity_key(tmp_path).public_key()) == fingerprint(new.public_key())
    assert stat.S_IMODE(os.stat(tmp_path / IDENTITY_FILE).st_mode) == 0o600


@pytest.mark.parametrize("what", ["other-user", "other-key", "other-ca", "one-cert", "junk"])
def test_check_chain_refuses_what_is_not_ours(tmp_path, what):
    ca, stranger = make_ca(), make_ca("stranger")
    key = load_identity_key(tmp_path)
    other = load_identity_key(tmp_path / "other")
    chain = {
        "other-user": chain_for(ca, "bob", key.public_key()),
        "other-key": chain_for(ca, "alice", other.public_key()),
        "other-ca": chain_for(ca, "alice", key.public_key())[:-len(ca.cert_pem)]
        + stranger.cert_pem,
        "one-cert": chain_for(ca, "alice", key.public_key())[:-len(ca.cert_pem)],
        "junk": b"hello",
    }[what]
    with pytest.raises(CredentialsError):
        check_chain(chain, "alice", key.public_key())
    save_chain(tmp_path, "alice", chain)
    assert Credentials.load(tmp_path, "alice") is None


def test_contexts_authenticate_both_ends_with_the_directory_ca(tmp_path):
    """A peer link made of ``server_context`` and ``client_context``: each
    side sees the other's certificate, naming its user; a client without a
    certificate is refused by the server."""
    ca = make_ca()
    creds = {}
    for name in ("alice", "bob"):
        d = tmp_path / name
        key = load_identity_key(d)
        save_chain(d, name, chain_for(ca, name, key.public_key()))
        creds[name] = Credentials.load(d, name)
    server_ctx = creds["bob"].server_context()
    listener = socket.create_server(("127.0.0.1", 0))
    seen = []

    def serve(n):
        for _ in range(n):
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    seen.append(user_of(tls.getpeercert(binary_form=True)))
                    tls.sendall(b"x")
            except (ssl.SSLError, OSError):
                seen.append(None)

    t = threading.Thread(target=serve, args=(2,), daemon=True)
    t.start()
    with socket.create_connection(listener.getsockname()) as raw, \
            creds["alice"].client_context().wrap_socket(raw) as tls:
        assert user_of(tls.getpeercert(binary_form=True)) == "bob"
        assert tls.recv(1) == b"x"
    # without a client certificate: the server refuses (TLS 1.3: after the
    # client's handshake, at its first read)
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cadata=creds["alice"].ca_pem.decode())
    with socket.create_connection(listener.getsockname()) as raw:
        with pytest.raises((ssl.SSLError, OSError)):
            with anonymous.wrap_socket(raw) as tls:
                assert tls.recv(1) == b""
                raise OSError("closed")
    t.join(10)
    listener.close()
    assert seen == ["alice", None]


def test_certificate_not_from_the_ca_is_refused_by_the_client_context(tmp_path):
    ca, stranger = make_ca(), make_ca("stranger")
    key = load_identity_key(tmp_path / "a")
    save_chain(tmp_path / "a", "alice", chain_for(ca, "alice", key.public_key()))
    alice = Credentials.load(tmp_path / "a", "alice")
    mkey = load_identity_key(tmp_path / "m")
    save_chain(tmp_path / "m", "bob", chain_for(stranger, "bob", mkey.public_key()))
    mallory = Credentials.load(tmp_path / "m", "bob")
    server_ctx = mallory.server_context(require=False)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with socket.create_connection(listener.getsockname()) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            alice.client_context().wrap_socket(raw)
    t.join(10)
    listener.close()
    assert isinstance(x509.load_pem_x509_certificate(alice.chain_pem), x509.Certificate)
