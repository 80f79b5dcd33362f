"""The rules of CERT (SPEC §5.3): who may bind which key to a name."""

from __future__ import annotations

import base64
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from eurechat.tls.enrolment import (
    MAX_REQUEST_BYTES,
    Change,
    RequestRefused,
    decide,
    is_directory,
    issue_user_certificate,
    load_request,
    user_of,
)
from eurechat.tls.fingerprint import fingerprint

NOW = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.timezone.utc)


def _csr(key, cn: str = "whoever") -> bytes:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .sign(key, algorithm))
    return csr.public_bytes(serialization.Encoding.PEM)


def _pem(der: bytes) -> bytes:
    """A request's DER as PEM, whatever it holds (cryptography would parse it first)."""
    body = base64.b64encode(der)
    lines = b"\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    return b"-----BEGIN CERTIFICATE REQUEST-----\n" + lines + b"\n-----END CERTIFICATE REQUEST-----\n"


def _ca():
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, None))
    return cert, key


class TestRequests:
    def test_a_valid_ed25519_request_gives_its_key_and_fingerprint(self):
        key = ed25519.Ed25519PrivateKey.generate()
        req = load_request(_csr(key))
        assert req.fingerprint == fingerprint(key.public_key())

    def test_another_key_type_is_refused(self):
        with pytest.raises(RequestRefused, match="Ed25519"):
            load_request(_csr(ec.generate_private_key(ec.SECP256R1())))

    def test_garbage_is_refused(self):
        with pytest.raises(RequestRefused, match="not a PEM certificate request"):
            load_request(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")

    def test_an_oversized_request_is_refused_before_parsing(self):
        with pytest.raises(RequestRefused, match="too large"):
            load_request(b"x" * (MAX_REQUEST_BYTES + 1))

    def test_a_request_whose_signature_does_not_verify_is_refused(self):
        key = ed25519.Ed25519PrivateKey.generate()
        der = bytearray(x509.load_pem_x509_csr(_csr(key)).public_bytes(serialization.Encoding.DER))
        der[-1] ^= 0x01  # the last byte belongs to the signature
        pem = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
        with pytest.raises(RequestRefused, match="signature"):
            load_request(pem)

    def test_a_request_whose_key_is_not_on_its_curve_is_refused(self):
        """The key is parsed only when asked for; a point off its curve is a
        refusal the session answers with ERR, not a ValueError escaping it."""
        key = ec.generate_private_key(ec.SECP256R1())
        point = key.public_key().public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.UncompressedPoint)
        der = bytearray(x509.load_pem_x509_csr(_csr(key)).public_bytes(serialization.Encoding.DER))
        at = der.index(point)
        der[at + 1] ^= 0x01  # x moves, y stays: no longer on the curve
        with pytest.raises(RequestRefused, match="unreadable certificate request"):
            load_request(_pem(bytes(der)))

    def test_a_request_of_an_unknown_version_is_refused(self):
        der = x509.load_pem_x509_csr(_csr(ed25519.Ed25519PrivateKey.generate())).public_bytes(
            serialization.Encoding.DER)
        version = der.index(b"\x02\x01\x00")  # the first INTEGER: the version, 0
        der = der[:version] + b"\x02\x01\x04" + der[version + 3:]
        with pytest.raises(RequestRefused, match="not a PEM certificate request"):
            load_request(_pem(der))


A, B, C = "sha256:" + "A" * 43, "sha256:" + "B" * 43, "sha256:" + "C" * 43


class TestDecide:
    def test_first_key_is_enrolled(self):
        assert decide("bob", None, A, session_key=None, by_password=True, reset=False) is Change.ENROL

    def test_same_key_is_a_renewal(self):
        assert decide("bob", A, A, session_key=None, by_password=True, reset=False) is Change.RENEW

    def test_another_key_is_refused_naming_the_enrolled_one(self):
        with pytest.raises(RequestRefused) as e:
            decide("bob", A, B, session_key=None, by_password=True, reset=False)
        assert str(e.value) == f"key mismatch: bob is enrolled with {A}"

    def test_rotation_needs_a_session_opened_with_the_enrolled_key(self):
        assert decide("bob", A, B, session_key=A, by_password=False, reset=False) is Change.ROTATE
        with pytest.raises(RequestRefused):
            decide("bob", A, B, session_key=C, by_password=False, reset=False)

    def test_reset_needs_the_password(self):
        assert decide("bob", A, B, session_key=None, by_password=True, reset=True) is Change.RESET
        with pytest.raises(RequestRefused):
            decide("bob", A, B, session_key=C, by_password=False, reset=True)


class TestCertificates:
    def test_user_certificate_names_the_user_and_chains_to_the_ca(self):
        ca_cert, ca_key = _ca()
        key = ed25519.Ed25519PrivateKey.generate()
        cert = issue_user_certificate("bob", key.public_key(), ca_cert, ca_key, now=NOW)
        cert.verify_directly_issued_by(ca_cert)
        assert user_of(cert) == "bob" and not is_directory(cert)
        assert cert.not_valid_after_utc - NOW == datetime.timedelta(days=7)
        assert fingerprint(cert.public_key()) == fingerprint(key.public_key())
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False

    def test_pem_and_der_are_read_alike(self):
        ca_cert, ca_key = _ca()
        cert = issue_user_certificate("bob", ed25519.Ed25519PrivateKey.generate().public_key(),
                                      ca_cert, ca_key, now=NOW)
        assert user_of(cert.public_bytes(serialization.Encoding.PEM)) == "bob"
        assert user_of(cert.public_bytes(serialization.Encoding.DER)) == "bob"

    def test_a_certificate_naming_two_users_names_none(self):
        ca_cert, ca_key = _ca()
        key = ed25519.Ed25519PrivateKey.generate()
        cert = (x509.CertificateBuilder().subject_name(ca_cert.subject)
                .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(7)
                .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([
                    x509.UniformResourceIdentifier("eurechat:user:bob"),
                    x509.UniformResourceIdentifier("eurechat:user:mallory")]), critical=False)
                .sign(ca_key, None))
        assert user_of(cert) is None

    def test_directory_certificate_is_told_apart(self):
        ca_cert, ca_key = _ca()
        key = ed25519.Ed25519PrivateKey.generate()
        cert = (x509.CertificateBuilder().subject_name(ca_cert.subject)
                .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(8)
                .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([
                    x509.UniformResourceIdentifier("eurechat:directory")]), critical=False)
                .sign(ca_key, None))
        assert is_directory(cert) and user_of(cert) is None
        assert not is_directory(ca_cert)
