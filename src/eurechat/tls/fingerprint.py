"""Names for keys: ``sha256:`` + unpadded base64url of SHA-256(SPKI DER).

A fingerprint names a key, not a certificate (SPEC §5.2): renewing a
certificate keeps it, rotating the key changes it.  This is the one place
that computes it, so pins, ``QUERY`` results and safety numbers agree.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["PREFIX", "fingerprint", "fingerprint_of_cert", "is_fingerprint"]

PREFIX = "sha256:"
_LENGTH = len(PREFIX) + 43  # 32 bytes in unpadded base64url


def fingerprint(public_key: PublicKeyTypes) -> str:
    """The fingerprint of ``public_key`` (any key type ``cryptography`` has)."""
    spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.sha256(spki).digest()
    return PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def fingerprint_of_cert(cert: Union[x509.Certificate, bytes]) -> str:
    """The fingerprint of the key a certificate (object, PEM or DER) carries."""
    if isinstance(cert, (bytes, bytearray)):
        data = bytes(cert)
        cert = (x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----")
                else x509.load_der_x509_certificate(data))
    return fingerprint(cert.public_key())


def is_fingerprint(text: str) -> bool:
    """Whether ``text`` has the shape of a fingerprint (for argument checks)."""
    if len(text) != _LENGTH or not text.startswith(PREFIX):
        return False
    body = text[len(PREFIX):]
    try:
        raw = base64.b64decode(body + "=", altchars=b"-_", validate=True)
    except (ValueError, TypeError):
        return False
    # 43 characters carry 258 bits: only the canonical encoding round-trips.
    return len(raw) == 32 and base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == body
