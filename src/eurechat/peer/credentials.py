"""A peer's certified identity: its key, the directory's certificate for it,
and the CA behind it (SPEC §5.3).

The identity key is ``<data-dir>/identity.key`` (one per data directory,
``peer.identity``).  The certificate the directory issues for it names one
user, so it is kept per user: ``<data-dir>/<user>.crt`` holds the user's
certificate and then the CA certificate (PEM), exactly as ``CERT`` returns
them.  It is written whole and renamed into place, so a reader sees the old
chain or the new one, never half of one.

A chain whose certificate does not carry the current identity key (the key
file was lost or replaced) is no credential at all: ``Credentials.load``
returns None for it, and the peer logs in with its password.

Everything here is synchronous; the contexts are for the directory link
(``apply`` to its client context) and for peer links (``client_context``,
``server_context``), which check name and fingerprint after the handshake.
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from ..tls.enrolment import user_of
from ..tls.fingerprint import fingerprint
from ..tls.identity import write_private
from .identity import IDENTITY_FILE, load_identity_key

__all__ = ["CERT_SUFFIX", "MARGIN", "Credentials", "CredentialsError", "cert_path",
           "certificate_request", "check_chain", "save_chain", "write_key"]

log = logging.getLogger("eurechat.peer.credentials")

CERT_SUFFIX = ".crt"
#: A certificate this close to its end is not presented: clocks differ, and
#: an expired client certificate fails the whole handshake.
MARGIN = datetime.timedelta(minutes=2)

_PEM = serialization.Encoding.PEM


class CredentialsError(ValueError):
    """A certificate chain that is not this peer's; the text says why."""


def cert_path(data_dir: Union[str, os.PathLike], user: str) -> Path:
    """Where ``user``'s certificate chain is kept in ``data_dir``."""
    return Path(data_dir) / f"{user}{CERT_SUFFIX}"


def certificate_request(key: ed25519.Ed25519PrivateKey) -> bytes:
    """A PEM certificate request for ``key`` (what ``CERT`` carries).

    The directory takes only the key from it (and checks its signature, the
    proof of possession); the subject is a placeholder."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eurechat peer")]))
           .sign(key, None))
    return csr.public_bytes(_PEM)


def check_chain(chain_pem: bytes, user: str,
                public_key: ed25519.Ed25519PublicKey) -> Tuple[x509.Certificate, x509.Certificate]:
    """The (user certificate, CA certificate) of a ``CERT`` reply, checked:
    the first names ``user``, carries ``public_key`` and is issued by the
    second.  Raises ``CredentialsError``."""
    try:
        certs = x509.load_pem_x509_certificates(bytes(chain_pem))
    except ValueError:
        raise CredentialsError("not a PEM certificate chain") from None
    if len(certs) != 2:
        raise CredentialsError(f"expected a certificate and its CA, got {len(certs)} "
                               "certificate(s)")
    cert, ca = certs
    if user_of(cert) != user:
        raise CredentialsError(f"the certificate names {user_of(cert)!r}, not {user!r}")
    if fingerprint(cert.public_key()) != fingerprint(public_key):
        raise CredentialsError("the certificate is for another key")
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:   # ValueError, TypeError, InvalidSignature
        raise CredentialsError("the certificate is not issued by the CA sent with it") from None
    return cert, ca


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(str(path), data, mode)


def save_chain(data_dir: Union[str, os.PathLike], user: str, chain_pem: bytes) -> Path:
    """Keep ``user``'s chain (certificate, then CA) in place of the old one."""
    path = cert_path(data_dir, user)
    _write_atomic(path, bytes(chain_pem), 0o600)
    return path


def write_key(data_dir: Union[str, os.PathLike], key: ed25519.Ed25519PrivateKey) -> Path:
    """Replace ``identity.key`` by ``key`` at once (0600): a rotation."""
    path = Path(data_dir) / IDENTITY_FILE
    _write_atomic(path, key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()), 0o600)
    return path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class Credentials:
    """One user's certified identity in one data directory."""

    user: str
    key: ed25519.Ed25519PrivateKey
    cert: x509.Certificate
    ca: x509.Certificate
    key_file: Path
    cert_file: Path

    @classmethod
    def load(cls, data_dir: Union[str, os.PathLike], user: str) -> Optional[Credentials]:
        """``user``'s credentials in ``data_dir``, or None when there is no
        certificate for the current identity key (none issued yet, the key
        replaced, an unreadable file).  An expired one is returned: ask
        ``valid()``."""
        path = cert_path(data_dir, user)
        try:
            chain = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc.strerror or exc)
            return None
        key = load_identity_key(data_dir)
        try:
            cert, ca = check_chain(chain, user, key.public_key())
        except CredentialsError as exc:
            log.info("%s is not usable: %s", path, exc)
            return None
        return cls(user, key, cert, ca, Path(data_dir) / IDENTITY_FILE, path)

    @property
    def fingerprint(self) -> str:
        """The identity key's fingerprint (what the directory enrols)."""
        return fingerprint(self.key.public_key())

    @property
    def ca_fingerprint(self) -> str:
        """The directory CA's fingerprint (what ``known_directories`` pins)."""
        return fingerprint(self.ca.public_key())

    @property
    def valid_until(self) -> datetime.datetime:
        return self.cert.not_valid_after_utc

    @property
    def ca_pem(self) -> bytes:
        return self.ca.public_bytes(_PEM)

    @property
    def chain_pem(self) -> bytes:
        return self.cert.public_bytes(_PEM) + self.ca_pem

    def valid(self, now: Optional[datetime.datetime] = None,
              margin: datetime.timedelta = MARGIN) -> bool:
        """Whether the certificate may be presented now: inside its validity
        window with ``margin`` to spare at the end (an expired client
        certificate fails the handshake)."""
        now = now or _now()
        return self.cert.not_valid_before_utc <= now and now + margin < self.valid_until

    def apply(self, context: ssl.SSLContext) -> ssl.SSLContext:
        """Make ``context`` present this certificate (and its CA).

        Raises ``ssl.SSLError`` when the key file changed since ``load``."""
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context

    def client_context(self) -> ssl.SSLContext:
        """TLS 1.3 client context for a peer link: presents this certificate,
        requires the other side's to chain to the same CA.  Host names are not
        checked: the caller checks the name (``tls.enrolment.user_of``) and
        fingerprint of ``getpeercert(binary_form=True)`` before writing."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.options |= ssl.OP_NO_COMPRESSION
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=self.ca_pem.decode("ascii"))
        return self.apply(ctx)

    def server_context(self, require: bool = True) -> ssl.SSLContext:
        """TLS 1.3 server context for a peer's listener: presents this
        certificate; a client certificate chained to the CA is required
        (``require=False``: optional, as for the directory's probes)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.options |= ssl.OP_NO_COMPRESSION
        ctx.num_tickets = 0
        ctx.verify_mode = ssl.CERT_REQUIRED if require else ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cadata=self.ca_pem.decode("ascii"))
        return self.apply(ctx)
