"""Binding names to keys: the rules of ``CERT`` (SPEC §5.3), without I/O.

The directory certifies one key per user.  Which request may change that key
is the whole security of enrolment, so it is decided here, in one pure
function, and tested on its own:

* no key enrolled yet: the first key presented is enrolled;
* the enrolled key again: a renewal (new certificate, same fingerprint);
* another key, in a TLS session opened with a valid certificate of the
  enrolled key: a rotation the old key authorises;
* another key with ``CERT <len> reset`` in a session authenticated by
  password: a reset, for a lost key;
* anything else: ``key mismatch``.

The certificate request proves possession of the key (its signature), and
only its key is used: the name and every extension come from the directory.
"""

from __future__ import annotations

import datetime
import enum
import secrets
from typing import NamedTuple, Optional, Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .fingerprint import fingerprint

__all__ = [
    "DIRECTORY_URI", "USER_URI_PREFIX", "USER_CERT_LIFETIME", "MAX_REQUEST_BYTES",
    "Change", "KeyRequest", "RequestRefused", "decide", "load_request",
    "issue_user_certificate", "user_of", "is_directory",
]

DIRECTORY_URI = "eurechat:directory"
USER_URI_PREFIX = "eurechat:user:"
USER_CERT_LIFETIME = datetime.timedelta(days=7)
#: A PEM Ed25519 request is ~300 bytes; anything near this is not one.
MAX_REQUEST_BYTES = 8192
#: Clocks disagree; a certificate valid from a little before its issue
#: is not refused by a peer whose clock is behind.
_BACKDATE = datetime.timedelta(minutes=5)


class Change(str, enum.Enum):
    """What a ``CERT`` request does to the user's enrolled key."""

    ENROL = "enrol"
    RENEW = "renew"
    ROTATE = "rotate"
    RESET = "reset"


class RequestRefused(ValueError):
    """A ``CERT`` request that must be answered with ``ERR``; the text says why."""


class KeyRequest(NamedTuple):
    """A checked certificate request: its key and that key's fingerprint."""

    public_key: ed25519.Ed25519PublicKey
    fingerprint: str


def load_request(pem: bytes) -> KeyRequest:
    """Parse and check a PEM certificate request; raise ``RequestRefused``.

    Only Ed25519 keys are accepted (SPEC §5.3), and the request's signature
    must verify: that is the proof the requester holds the private key.
    """
    if len(pem) > MAX_REQUEST_BYTES:
        raise RequestRefused(f"certificate request too large ({len(pem)} > {MAX_REQUEST_BYTES} bytes)")
    try:
        csr = x509.load_pem_x509_csr(pem)
    except (ValueError, x509.InvalidVersion):
        raise RequestRefused("not a PEM certificate request") from None
    try:
        # Both parse more of the request, and refuse what they cannot read
        # (a point off its curve, an unknown algorithm) with ValueError or
        # UnsupportedAlgorithm: a bad request, not a server error.
        key = csr.public_key()
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise RequestRefused("certificate request key must be Ed25519")
        if not csr.is_signature_valid:
            raise RequestRefused("certificate request signature does not verify")
    except (ValueError, UnsupportedAlgorithm) as exc:
        if isinstance(exc, RequestRefused):
            raise
        raise RequestRefused(f"unreadable certificate request ({exc})") from None
    return KeyRequest(key, fingerprint(key))


def decide(name: str, enrolled: Optional[str], requested: str, *,
           session_key: Optional[str], by_password: bool, reset: bool) -> Change:
    """Which change a request for ``requested`` makes, or ``RequestRefused``.

    ``enrolled`` is the user's enrolled fingerprint (None: none yet);
    ``session_key`` the fingerprint of the valid certificate the TLS session
    was opened with (None: no client certificate); ``by_password`` whether the
    session was authenticated by password; ``reset`` whether the request says
    ``reset``.
    """
    if enrolled is None:
        return Change.ENROL
    if requested == enrolled:
        return Change.RENEW
    if session_key is not None and session_key == enrolled:
        return Change.ROTATE
    if reset and by_password:
        return Change.RESET
    raise RequestRefused(f"key mismatch: {name} is enrolled with {enrolled}")


def issue_user_certificate(
        name: str, public_key: ed25519.Ed25519PublicKey, ca_cert: x509.Certificate,
        ca_key: CertificateIssuerPrivateKeyTypes, *,
        now: Optional[datetime.datetime] = None,
        lifetime: datetime.timedelta = USER_CERT_LIFETIME) -> x509.Certificate:
    """A certificate naming ``eurechat:user:<name>`` for ``public_key``.

    Usable both to dial (client auth) and to listen (server auth): a peer
    does both with one identity.  ``now`` is explicit so tests can issue
    certificates that are already expired or not yet valid.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(USER_URI_PREFIX + name)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_cert.public_key()), critical=False)
    )
    algorithm = None if isinstance(ca_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(ca_key, algorithm)


def _uris(cert: x509.Certificate) -> list:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def _load(cert: Union[x509.Certificate, bytes]) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    data = bytes(cert)
    return (x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_certificate(data))


def user_of(cert: Union[x509.Certificate, bytes]) -> Optional[str]:
    """The user a certificate names (its ``eurechat:user:`` URI), or None.

    A certificate naming two users names none: the name must be unambiguous.
    """
    users = [u[len(USER_URI_PREFIX):] for u in _uris(_load(cert)) if u.startswith(USER_URI_PREFIX)]
    return users[0] if len(users) == 1 else None


def is_directory(cert: Union[x509.Certificate, bytes]) -> bool:
    """Whether a certificate names the directory (and no user)."""
    uris = _uris(_load(cert))
    return DIRECTORY_URI in uris and not any(u.startswith(USER_URI_PREFIX) for u in uris)
