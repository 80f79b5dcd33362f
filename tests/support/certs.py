"""Certificates made to order for tests: a CA, a certificate it issues with
any subject alternative name URI and validity, and PEM files of them.

The directory makes its own identity (``eurechat.tls.identity``); these are
for what it never makes: certificates without the directory URI, expired
ones, ones issued by a stranger — the shapes the peer's trust checks must
refuse.
"""

from __future__ import annotations

import datetime
import os
import ssl
import tempfile
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

__all__ = ["Issued", "make_ca", "issue", "write_pair", "server_context", "directory_pki"]

DAY = datetime.timedelta(days=1)


class Issued(NamedTuple):
    key: ed25519.Ed25519PrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(Encoding.DER)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "test CA") -> Issued:
    key = ed25519.Ed25519PrivateKey.generate()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY).not_valid_after(now + 365 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, None))
    return Issued(key, cert)


def issue(ca: Issued, uris: Sequence[str] = ("eurechat:directory",), cn: str = "server",
          not_before: Optional[datetime.datetime] = None,
          not_after: Optional[datetime.datetime] = None) -> Issued:
    """A leaf certificate issued by ``ca`` with these SAN URIs (and DNS
    ``localhost``, so it is a usable TLS server certificate either way)."""
    key = ed25519.Ed25519PrivateKey.generate()
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName("localhost")]
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - DAY)
            .not_valid_after(not_after or now + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca.key, None))
    return Issued(key, cert)


def write_pair(directory: Path, stem: str, item: Issued) -> tuple:
    """``stem.pem`` and ``stem.key`` in ``directory``; returns their paths."""
    cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert.write_bytes(item.cert_pem)
    key.write_bytes(item.key_pem)
    key.chmod(0o600)
    return cert, key


def server_context(leaf: Issued, ca: Issued) -> ssl.SSLContext:
    """A TLS 1.3 server context presenting ``leaf`` with ``ca`` behind it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with tempfile.TemporaryDirectory() as d:
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        Path(cert).write_bytes(leaf.cert_pem + ca.cert_pem)
        Path(key).write_bytes(leaf.key_pem)
        ctx.load_cert_chain(cert, key)
    return ctx


def directory_pki() -> tuple:
    """(server context, CA PEM) of a made-up directory: for scripted
    directories that a real client must be able to trust."""
    ca = make_ca("scripted directory CA")
    return server_context(issue(ca), ca), ca.cert_pem
