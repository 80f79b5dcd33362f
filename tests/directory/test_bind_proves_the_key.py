"""Nobody can publish another user's endpoint (SPEC §5.4): for a user with an
enrolled key, the directory's BIND check completes a TLS handshake, presenting
its own ``eurechat:directory`` certificate, and requires the listener's
certificate to be that user's; ``QUERY`` after ``HELLO 0 eurechat/2`` then
gives the key's fingerprint as a fourth field.  Real CLI, real TLS."""

from __future__ import annotations

import socket
import ssl
import threading
from typing import List, Optional

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from eurechat.framing import Decoder, Message
from eurechat.tls.enrolment import issue_user_certificate
from eurechat.tls.fingerprint import fingerprint
from eurechat.tls.identity import load_directory_identity
from support.client import FramedClient
from support.processes import run_directory
from support.tls import ca_pem_of, trusting

_PEM = serialization.Encoding.PEM
BAD_BIND = Message("ERR", (), "invalid bind notification")


class Listener:
    """A TLS listener on loopback presenting one certificate, recording the
    URIs of the client certificates it was shown (it asks for one)."""

    def __init__(self, tmp_path, cert: x509.Certificate, key, ca_pem: bytes) -> None:
        cert_file, key_file = tmp_path / f"l{id(self)}.crt", tmp_path / f"l{id(self)}.key"
        cert_file.write_bytes(cert.public_bytes(_PEM))
        key_file.write_bytes(key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert_file), str(key_file))
        self.ctx.verify_mode = ssl.CERT_OPTIONAL
        self.ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.client_uris: List[List[str]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(10)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    der = tls.getpeercert(binary_form=True)
                    uris = []
                    if der:
                        san = x509.load_der_x509_certificate(der).extensions \
                            .get_extension_for_class(x509.SubjectAlternativeName).value
                        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
                    self.client_uris.append(uris)
                    decoder = Decoder()
                    while True:  # answer the liveness PINGs until the directory closes
                        data = tls.recv(4096)
                        if not data:
                            break
                        for m in decoder.feed(data):
                            if m.type == "PING":
                                tls.sendall(bytes(Message("PONG", m.args)))
            except (OSError, ValueError):
                continue

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("bind-proof"))
    with run_directory("--check-interval", "3600", data_dir=data) as d:
        yield d


def self_signed(name: str, key) -> x509.Certificate:
    import datetime
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"eurechat:user:{name}")]), critical=False)
            .sign(key, None))


def csr(key) -> bytes:
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
            .sign(key, None).public_bytes(_PEM))


def v2_session(directory, name: str, register: bool = True,
               enrol_key=None) -> FramedClient:
    c = FramedClient(*directory.address, tls=trusting(ca_pem_of(directory.data_dir)))
    assert c.request("HELLO", "eurechat/2") == Message("ACK", (), "eurechat/2")
    if register:
        assert c.request("REGISTER", name, f"{name}-password").type == "ACK"
    c.login(name, f"{name}-password")
    if enrol_key is not None:
        assert c.request("CERT", payload=csr(enrol_key)).type == "RESULT"
    return c


def user_cert(directory, name: str, key) -> x509.Certificate:
    identity = load_directory_identity(directory.data_dir)
    return issue_user_certificate(name, key.public_key(), identity.ca_cert, identity.ca_key)


def bind(c: FramedClient, port: int) -> Message:
    c.send("BIND", "127.0.0.1", str(port))
    return c.recv()


def query_line(directory, name: str) -> Optional[bytes]:
    with v2_session(directory, "querier", register=False) as c:
        return c.request("QUERY", name).payload


@pytest.fixture(scope="module", autouse=True)
def querier(directory):
    with FramedClient(*directory.address, tls=trusting(ca_pem_of(directory.data_dir))) as c:
        assert c.request("REGISTER", "querier", "querier-password").type == "ACK"


class TestEnrolledUser:
    def test_a_listener_with_the_users_certificate_is_bound_and_its_key_is_told(
            self, directory, tmp_path):
        key = ed25519.Ed25519PrivateKey.generate()
        ca_pem = ca_pem_of(directory.data_dir)
        listener = Listener(tmp_path, user_cert(directory, "alice", key), key, ca_pem)
        try:
            with v2_session(directory, "alice", enrol_key=key) as c:
                assert bind(c, listener.port).type == "ACK"
            fp = fingerprint(key.public_key())
            assert query_line(directory, "alice") == f"alice,127.0.0.1,{listener.port},{fp}".encode()
            # The probe presented the directory's own certificate.
            assert listener.client_uris and listener.client_uris[-1] == ["eurechat:directory"]
            # Without HELLO the line is the seed's.
            with FramedClient(*directory.address, tls=trusting(ca_pem)) as c:
                c.login("querier", "querier-password")
                assert c.request("QUERY", "alice").payload == \
                    f"alice,127.0.0.1,{listener.port}".encode()
        finally:
            listener.close()

    def test_a_listener_with_another_users_valid_certificate_is_refused(self, directory,
                                                                         tmp_path):
        bob_key, mallory_key = ed25519.Ed25519PrivateKey.generate(), \
            ed25519.Ed25519PrivateKey.generate()
        with v2_session(directory, "mallory", enrol_key=mallory_key):
            pass
        ca_pem = ca_pem_of(directory.data_dir)
        mallory = Listener(tmp_path, user_cert(directory, "mallory", mallory_key),
                           mallory_key, ca_pem)
        try:
            with v2_session(directory, "bob", enrol_key=bob_key) as c:
                assert bind(c, mallory.port) == BAD_BIND
            assert query_line(directory, "bob") == b""
        finally:
            mallory.close()

    def test_a_self_signed_certificate_naming_the_user_is_refused(self, directory, tmp_path):
        key = ed25519.Ed25519PrivateKey.generate()
        forged = Listener(tmp_path, self_signed("carol", key), key,
                          ca_pem_of(directory.data_dir))
        try:
            with v2_session(directory, "carol", enrol_key=key) as c:
                assert bind(c, forged.port) == BAD_BIND
        finally:
            forged.close()

    def test_a_certificate_of_the_name_with_a_key_that_is_not_enrolled_is_refused(
            self, directory, tmp_path):
        enrolled, other = ed25519.Ed25519PrivateKey.generate(), \
            ed25519.Ed25519PrivateKey.generate()
        listener = Listener(tmp_path, user_cert(directory, "dave", other), other,
                            ca_pem_of(directory.data_dir))
        try:
            with v2_session(directory, "dave", enrol_key=enrolled) as c:
                assert bind(c, listener.port) == BAD_BIND
        finally:
            listener.close()


class TestUserWithoutKey:
    def test_is_bound_over_tls_without_verification_and_has_an_empty_fourth_field(
            self, directory, tmp_path):
        key = ed25519.Ed25519PrivateKey.generate()
        listener = Listener(tmp_path, self_signed("erin", key), key,
                            ca_pem_of(directory.data_dir))
        try:
            with v2_session(directory, "erin") as c:
                assert bind(c, listener.port).type == "ACK"
            assert query_line(directory, "erin") == f"erin,127.0.0.1,{listener.port},".encode()
        finally:
            listener.close()


class TestLivenessProbe:
    def test_a_listener_that_stops_proving_the_key_is_removed(self, tmp_path):
        """The liveness probe checks the key again: a registration whose
        listener now presents another user's certificate is dropped."""
        with run_directory("--check-interval", "1", data_dir=str(tmp_path / "d")) as d:
            ca_pem = ca_pem_of(d.data_dir)
            with FramedClient(*d.address, tls=trusting(ca_pem)) as c:
                assert c.request("REGISTER", "querier", "querier-password").type == "ACK"
            alice, mallory = ed25519.Ed25519PrivateKey.generate(), \
                ed25519.Ed25519PrivateKey.generate()
            listener = Listener(tmp_path, user_cert(d, "alice", alice), alice, ca_pem)
            try:
                with v2_session(d, "alice", enrol_key=alice) as c:
                    assert bind(c, listener.port).type == "ACK"
                start = len(d.err_lines)
                d.wait_for_log(r"liveness round \d+: 1 probed, 0 removed", start=start)
                assert query_line(d, "alice") != b"", "a good listener was dropped"
                other = Listener(tmp_path, user_cert(d, "mallory", mallory), mallory, ca_pem)
                listener.ctx = other.ctx  # the same port now proves mallory's key
                other.close()
                d.wait_for_log(r"removed alice .*names mallory, not alice", start=start)
                assert query_line(d, "alice") == b""
            finally:
                listener.close()
