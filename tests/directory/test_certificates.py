"""Keys bound to names at the directory (SPEC §5.3), through the real CLI and
real TLS: ``CERT`` enrols, renews, rotates (authorised by the old key) and
resets (authorised by the password); a session opened with the enrolled key's
certificate logs in without a password; any other certificate does not."""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from eurechat.directory.accounts.base import KeyKind
from eurechat.directory.accounts.sqlite import DB_NAME, SqliteAccounts
from eurechat.framing import Message
from eurechat.tls.enrolment import issue_user_certificate, user_of
from eurechat.tls.fingerprint import fingerprint, fingerprint_of_cert
from eurechat.tls.identity import load_directory_identity
from support.client import ConnectionClosed, FramedClient
from support.processes import run_directory
from support.tls import ca_pem_of, trusting

PW = "alice-password"
_PEM = serialization.Encoding.PEM


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("cert-directory"))
    with run_directory("--check-interval", "3600", data_dir=data) as d:
        yield d


def request_for(key: ed25519.Ed25519PrivateKey) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
           .sign(key, None))
    return csr.public_bytes(_PEM)


def context(directory, cert_pem: bytes = b"", key=None, tmp_path=None) -> ssl.SSLContext:
    """A client context trusting the directory's CA, presenting ``cert_pem``."""
    ctx = trusting(ca_pem_of(directory.data_dir))
    if cert_pem:
        cert_file, key_file = tmp_path / f"c{id(cert_pem)}.pem", tmp_path / f"k{id(key)}.pem"
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def password_session(directory, name: str = "alice", register: bool = False) -> FramedClient:
    c = FramedClient(*directory.address, tls=context(directory))
    if register:
        assert c.request("REGISTER", name, PW) == Message("ACK", (), f"account {name} created")
    c.login(name, PW)
    return c


def enrol(c: FramedClient, key, reset: bool = False) -> Message:
    return c.request("CERT", *(["reset"] if reset else []), payload=request_for(key))


def certs_of(reply: Message):
    return x509.load_pem_x509_certificates(reply.payload)


def key_history(directory, name: str):
    async def read():
        store = SqliteAccounts(os.path.join(directory.data_dir, DB_NAME))
        await store.start()
        try:
            return await store.key(name), await store.key_history(name)
        finally:
            await store.close()
    return asyncio.run(read())


@pytest.fixture(scope="module")
def alice(directory):
    """alice, enrolled with ``k1``: (key, certificate chain PEM)."""
    k1 = ed25519.Ed25519PrivateKey.generate()
    with password_session(directory, register=True) as c:
        reply = enrol(c, k1)
    assert reply.type == "RESULT", reply
    return k1, reply.payload


class TestEnrolment:
    def test_the_first_key_is_certified_for_the_user_by_the_directory_ca(self, directory, alice):
        k1, chain = alice
        user, ca = x509.load_pem_x509_certificates(chain)
        assert user_of(user) == "alice"
        assert fingerprint(user.public_key()) == fingerprint(k1.public_key())
        assert ca.public_bytes(_PEM) == ca_pem_of(directory.data_dir)
        user.verify_directly_issued_by(ca)
        lifetime = user.not_valid_after_utc - user.not_valid_before_utc
        assert datetime.timedelta(days=7) <= lifetime <= datetime.timedelta(days=7, minutes=10)
        enrolled, history = key_history(directory, "alice")
        assert enrolled == fingerprint(k1.public_key())
        assert [h.kind for h in history][:1] == [KeyKind.ENROL]

    def test_the_same_key_again_is_a_renewal(self, directory, alice):
        k1, _ = alice
        before = len(key_history(directory, "alice")[1])
        with password_session(directory) as c:
            reply = enrol(c, k1)
        assert reply.type == "RESULT"
        assert fingerprint_of_cert(certs_of(reply)[0]) == fingerprint(k1.public_key())
        assert len(key_history(directory, "alice")[1]) == before

    def test_another_key_with_the_password_alone_is_a_key_mismatch(self, directory, alice):
        k1, _ = alice
        with password_session(directory) as c:
            reply = enrol(c, ed25519.Ed25519PrivateKey.generate())
            assert reply == Message("ERR", (), f"key mismatch: alice is enrolled with "
                                                f"{fingerprint(k1.public_key())}")
            assert c.request("PING", "still").args == ("still",)  # the session goes on

    def test_cert_over_plaintext_is_refused(self, directory, alice):
        with FramedClient(*directory.address) as c:
            c.login("alice", PW)
            reply = enrol(c, alice[0])
        assert reply == Message("ERR", (), "CERT requires a TLS session")

    def test_a_request_that_is_not_one_is_refused_and_the_session_stays(self, directory, alice):
        with password_session(directory) as c:
            reply = c.request("CERT", payload=b"-----BEGIN CERTIFICATE REQUEST-----\nxx\n")
            assert reply.type == "ERR" and b"certificate request" in reply.payload
            assert c.request("QUERY", "nobody") == Message("RESULT")


class TestLoginByCertificate:
    def test_the_enrolled_key_logs_in_without_a_password(self, directory, alice, tmp_path):
        k1, chain = alice
        with FramedClient(*directory.address, tls=context(directory, chain, k1, tmp_path)) as c:
            assert c.request("USER", "alice") == Message(
                "ACK", (), "hi alice, authenticated by certificate")
            assert c.request("QUERY", "nobody") == Message("RESULT")

    def test_the_certificate_of_one_user_does_not_log_in_another(self, directory, alice,
                                                                  tmp_path):
        k1, chain = alice
        # bob enrols the very same key: only the name in the certificate
        # tells the two apart.
        with password_session(directory, "bob", register=True) as c:
            assert enrol(c, k1).type == "RESULT"
        with FramedClient(*directory.address, tls=context(directory, chain, k1, tmp_path)) as c:
            assert c.request("USER", "bob") == Message(
                "ACK", (), "hi bob, authentication required")
            c.send("QUERY")
            assert c.recv().payload == b"a 'PASS <password>' command was expected!"

    def test_a_certificate_from_another_ca_fails_the_handshake(self, directory, tmp_path):
        other = load_directory_identity(str(tmp_path / "other"))
        key = ed25519.Ed25519PrivateKey.generate()
        forged = issue_user_certificate("alice", key.public_key(), other.ca_cert, other.ca_key)
        with pytest.raises((ssl.SSLError, ConnectionError, ConnectionClosed)):
            with FramedClient(*directory.address,
                              tls=context(directory, forged.public_bytes(_PEM), key,
                                          tmp_path)) as c:
                c.request("USER", "alice")  # TLS 1.3: the refusal may come after the handshake

    def test_an_expired_certificate_fails_and_the_password_still_works(self, directory, alice,
                                                                        tmp_path):
        k1, chain = alice
        identity = load_directory_identity(directory.data_dir)
        long_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
        expired = issue_user_certificate("alice", k1.public_key(), identity.ca_cert,
                                         identity.ca_key, now=long_ago)
        with pytest.raises((ssl.SSLError, ConnectionError, ConnectionClosed)):
            with FramedClient(*directory.address,
                              tls=context(directory, expired.public_bytes(_PEM), k1,
                                          tmp_path)) as c:
                c.request("USER", "alice")
        with password_session(directory) as c:
            assert c.request("PING").type == "PONG"


class TestKeyChanges:
    """Run in order on one account, carol: enrol, rotate, then reset."""

    def test_rotation_reset_and_what_old_certificates_can_do(self, directory, tmp_path):
        k1, k2, k3 = (ed25519.Ed25519PrivateKey.generate() for _ in range(3))
        with password_session(directory, "carol", register=True) as c:
            chain1 = enrol(c, k1).payload
        # A rotation: the session is opened with the old key's certificate.
        with FramedClient(*directory.address,
                          tls=context(directory, chain1, k1, tmp_path)) as c:
            assert c.request("USER", "carol").payload.endswith(b"by certificate")
            reply = enrol(c, k2)
        assert reply.type == "RESULT", reply
        chain2 = reply.payload
        assert fingerprint_of_cert(certs_of(reply)[0]) == fingerprint(k2.public_key())
        # The old key's certificate no longer logs in: the password is asked.
        with FramedClient(*directory.address,
                          tls=context(directory, chain1, k1, tmp_path)) as c:
            assert c.request("USER", "carol") == Message(
                "ACK", (), "hi carol, authentication required")
            # ... nor authorises a rotation, even after the password.
            assert c.request("PASS", PW).type == "ACK"
            assert enrol(c, k3).payload.startswith(b"key mismatch")
        # A lost key: reset by password alone.
        with password_session(directory, "carol") as c:
            reply = enrol(c, k3, reset=True)
        assert reply.type == "RESULT", reply
        with FramedClient(*directory.address,
                          tls=context(directory, chain2, k2, tmp_path)) as c:
            assert c.request("USER", "carol").payload == b"hi carol, authentication required"
        enrolled, history = key_history(directory, "carol")
        assert enrolled == fingerprint(k3.public_key())
        assert [(h.fingerprint, h.kind) for h in history] == [
            (fingerprint(k1.public_key()), KeyKind.ENROL),
            (fingerprint(k2.public_key()), KeyKind.ROTATE),
            (fingerprint(k3.public_key()), KeyKind.RESET)]

    def test_a_certificate_of_a_key_that_is_not_enrolled_authorises_no_rotation(
            self, directory, tmp_path):
        k1, k2 = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
        with password_session(directory, "dave", register=True) as c:
            assert enrol(c, k1).type == "RESULT"
        other = issue_user_certificate(  # valid and dave's name, but not dave's key
            "dave", k2.public_key(), *_ca_of(directory))
        with FramedClient(*directory.address,
                          tls=context(directory, other.public_bytes(_PEM), k2, tmp_path)) as c:
            assert c.request("USER", "dave").payload == b"hi dave, authentication required"
            assert c.request("PASS", PW).type == "ACK"
            assert enrol(c, k2).payload == (
                f"key mismatch: dave is enrolled with {fingerprint(k1.public_key())}").encode()
        assert key_history(directory, "dave")[0] == fingerprint(k1.public_key())


def _ca_of(directory):
    identity = load_directory_identity(directory.data_dir)
    return identity.ca_cert, identity.ca_key
