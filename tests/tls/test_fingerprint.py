"""Fingerprints name keys (SPEC §5.2): one format, stable across certificates."""

from __future__ import annotations

import base64
import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from eurechat.tls.fingerprint import fingerprint, fingerprint_of_cert, is_fingerprint


def _cert(key: ed25519.Ed25519PrivateKey, serial: int) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, None))


class TestFormat:
    def test_is_sha256_of_spki_in_unpadded_base64url(self):
        key = ed25519.Ed25519PrivateKey.generate().public_key()
        spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        want = base64.urlsafe_b64encode(hashlib.sha256(spki).digest()).rstrip(b"=")
        assert fingerprint(key) == "sha256:" + want.decode()
        assert "=" not in fingerprint(key) and is_fingerprint(fingerprint(key))

    def test_shape_check_rejects_near_misses(self):
        good = fingerprint(ed25519.Ed25519PrivateKey.generate().public_key())
        for bad in ("", good[:-1], good + "A", "sha1:" + good[7:], good[:-1] + "/",
                    good[:-1] + "="):
            assert not is_fingerprint(bad), bad


class TestNamesTheKeyNotTheCertificate:
    def test_two_certificates_of_one_key_share_it(self):
        key = ed25519.Ed25519PrivateKey.generate()
        a, b = _cert(key, 1), _cert(key, 2)
        assert a != b
        assert fingerprint_of_cert(a) == fingerprint_of_cert(b) == fingerprint(key.public_key())

    def test_pem_and_der_give_the_same(self):
        cert = _cert(ed25519.Ed25519PrivateKey.generate(), 3)
        assert (fingerprint_of_cert(cert.public_bytes(Encoding.PEM))
                == fingerprint_of_cert(cert.public_bytes(Encoding.DER))
                == fingerprint_of_cert(cert))

    def test_another_key_differs(self):
        k1 = ed25519.Ed25519PrivateKey.generate().public_key()
        k2 = ed25519.Ed25519PrivateKey.generate().public_key()
        assert fingerprint(k1) != fingerprint(k2)
