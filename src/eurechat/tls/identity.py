"""The directory's identity (SPEC §5.2): a CA, and a server certificate it issued.

Why a CA and not one self-signed server certificate: the same CA issues the
users' certificates (SPEC §5.3), several directory hosts serving one user
base share it (``--tls-ca-cert/--tls-ca-key``), and a server certificate can
be renewed without changing what peers pinned -- the directory's fingerprint
is the CA *key's*.  Peers do not check host names: they pin the CA and
require the URI ``eurechat:directory`` in the server certificate's subject
alternative names, because a user's certificate from the same CA must never
pass as the directory.

On disk, in ``<data-dir>/tls/`` (mode 0700)::

    ca.key      the CA's Ed25519 private key (0600; absent with an operator CA)
    ca.crt      the CA certificate (self-signed, 10 years)
    server.key  the server's Ed25519 private key (0600)
    server.crt  the server certificate (1 year), then the CA certificate

Key files are written umask-safe and atomically (a new file opened with
``O_EXCL`` and mode 0600, fsynced, renamed into place), under an ``flock`` so
that workers or instances sharing a data directory never create two CAs.
The server certificate is issued again when it is within 30 days of expiry,
no longer chains to the CA, or lacks the listening host's address.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import stat
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .enrolment import DIRECTORY_URI, USER_URI_PREFIX
from .fingerprint import fingerprint

__all__ = ["DIRECTORY_URI", "USER_URI_PREFIX", "DirectoryIdentity", "IdentityError",
           "load_directory_identity", "issue_certificate", "create_ca", "write_private",
           "tls_dir", "stored_fingerprint"]

log = logging.getLogger("eurechat.tls.identity")

CA_DAYS = 3650
SERVER_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=30)
_BACKDATE = datetime.timedelta(minutes=5)  # clocks of peers a little behind ours


class IdentityError(Exception):
    """The identity cannot be loaded or created; the message says why, in one line."""


@dataclass(frozen=True)
class DirectoryIdentity:
    """What a running directory needs of its identity."""

    directory: str             # the tls/ directory
    ca_cert: x509.Certificate
    ca_pem: bytes              # the CA certificate, PEM (the CACERT reply)
    ca_key: Optional[CertificateIssuerPrivateKeyTypes]  # signs users' certificates
    cert_file: str             # server certificate + CA certificate, PEM
    key_file: str              # server key, PEM
    fingerprint: str           # the CA key's: the directory's name for peers


def tls_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "tls")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _not_after(cert: x509.Certificate) -> datetime.datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    if value is None:  # cryptography < 42
        value = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return value


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> Optional[hashes.HashAlgorithm]:
    """Ed25519/Ed448 sign without a separate digest; other keys with SHA-256."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    return hashes.SHA256()


def issue_certificate(ca_key: CertificateIssuerPrivateKeyTypes, ca_cert: x509.Certificate,
                      public_key: CertificatePublicKeyTypes, *, common_name: str,
                      uris: Sequence[str] = (), dns_names: Sequence[str] = (),
                      ips: Sequence[str] = (), days: int = SERVER_DAYS,
                      server: bool = True, client: bool = False) -> x509.Certificate:
    """A leaf certificate for ``public_key`` issued by the CA.

    The subject alternative names carry what peers check: ``uris`` (the role:
    ``eurechat:directory``, ``eurechat:user:<name>``), and for servers the
    DNS names and IP addresses a generic TLS client might expect.  ``server``
    and ``client`` set the extended key usages (a peer's certificate is
    both: its listener serves with it and it logs in with it)."""
    now = _now()
    names = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
        ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + datetime.timedelta(days=days), _not_after(ca_cert)))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_cert.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, _hash_for(ca_key))


def create_ca(common_name: str = "eurechat directory CA",
              days: int = CA_DAYS) -> tuple:
    """A new Ed25519 CA: ``(key, self-signed certificate)``."""
    key = ed25519.Ed25519PrivateKey.generate()
    now = _now()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, None))
    return key, cert


# -- files ------------------------------------------------------------------
def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_private(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically with ``mode`` whatever the umask:
    a fresh temporary file (``O_EXCL``, created with ``mode`` and ``fchmod``-ed
    to it), fsynced, renamed over ``path``, and the directory fsynced.  A
    reader sees the old file or the whole new one, never a partial key."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # left by a crashed earlier run of this very pid
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                 mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _ensure_dir(path: str) -> None:
    """``path`` exists, is a directory of ours, and only we can read it."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise IdentityError(f"{path} is not a directory")
    if stat.S_IMODE(st.st_mode) != 0o700:
        if stat.S_IMODE(st.st_mode) & 0o077:
            log.warning("%s was accessible to other users (mode %o); now 0700", path,
                        stat.S_IMODE(st.st_mode))
        os.chmod(path, 0o700)


def _check_private(path: str) -> None:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        log.warning("%s was readable by other users (mode %o); now 0600", path, mode)
        os.chmod(path, 0o600)


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
    """Hold an exclusive lock on ``directory/.lock`` (creation is check-then-act)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: one process per data directory is assumed
        yield
        return
    fd = os.open(os.path.join(directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror or exc}") from None


def _load_key(path: str):
    try:
        return serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{path} is not an unencrypted PEM private key ({exc})") from None


def _load_cert(path: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError as exc:
        raise IdentityError(f"{path} is not a PEM certificate ({exc})") from None


def _same_key(a, b) -> bool:
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*spki) == b.public_bytes(*spki)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _server_ips(host: str) -> list:
    """The IP addresses a server certificate names: loopback, and ``host``
    when it is a literal other than a wildcard."""
    ips = ["127.0.0.1", "::1"]
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return ips
    if not ip.is_unspecified and str(ip) not in ips:
        ips.append(str(ip))
    return ips


def _server_ok(cert: x509.Certificate, ca_cert: x509.Certificate, ips: Sequence[str]) -> bool:
    """Whether a stored server certificate can still be used with this CA and host."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if _not_after(cert) - _now() < RENEW_BEFORE:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if DIRECTORY_URI not in san.get_values_for_type(x509.UniformResourceIdentifier):
        return False
    try:  # it also authenticates the directory's probes to peers' listeners
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        return False
    have = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    return all(str(ipaddress.ip_address(i)) in have for i in ips)


def load_directory_identity(data_dir: str, host: str = "127.0.0.1", *,
                            ca_cert_file: Optional[str] = None,
                            ca_key_file: Optional[str] = None) -> DirectoryIdentity:
    """The directory's identity in ``data_dir``, created or renewed as needed.

    Without ``ca_cert_file``/``ca_key_file`` the CA lives in the data
    directory (created on first use); with them the operator's CA issues this
    host's server certificate (and users' certificates) and ``tls/ca.key`` is
    neither created nor used."""
    if (ca_cert_file is None) != (ca_key_file is None):
        raise IdentityError("--tls-ca-cert and --tls-ca-key go together")
    directory = tls_dir(data_dir)
    try:
        _ensure_dir(directory)
        with _locked(directory):
            return _load_locked(directory, host, ca_cert_file, ca_key_file)
    except OSError as exc:
        raise IdentityError(f"cannot use {directory}: {exc.strerror or exc}") from None


def _load_locked(directory: str, host: str, ca_cert_file: Optional[str],
                 ca_key_file: Optional[str]) -> DirectoryIdentity:
    ca_crt = os.path.join(directory, "ca.crt")
    ca_keyf = os.path.join(directory, "ca.key")
    if ca_cert_file is not None:
        ca_cert = _load_cert(ca_cert_file)
        ca_key = _load_key(ca_key_file)
        if not _same_key(ca_key.public_key(), ca_cert.public_key()):
            raise IdentityError(f"{ca_key_file} is not the key of {ca_cert_file}")
        if not _is_ca(ca_cert):
            raise IdentityError(f"{ca_cert_file} is not a CA certificate "
                                "(BasicConstraints CA:TRUE is missing)")
        # Kept beside the server certificate, so CACERT and checks read one place.
        if not os.path.exists(ca_crt) or _read(ca_crt) != _cert_pem(ca_cert):
            write_private(ca_crt, _cert_pem(ca_cert), 0o644)
    elif os.path.exists(ca_crt) and not os.path.exists(ca_keyf):
        # An operator's CA was used here: making a new CA now would silently
        # change the identity every peer pinned.
        raise IdentityError(f"{ca_crt} exists without ca.key: this data directory serves "
                            "with an operator's CA; pass --tls-ca-cert and --tls-ca-key "
                            "(or remove the tls directory to create a new identity)")
    elif os.path.exists(ca_keyf):
        _check_private(ca_keyf)
        ca_key = _load_key(ca_keyf)
        ca_cert = _load_cert(ca_crt)
        if not _same_key(ca_key.public_key(), ca_cert.public_key()):
            raise IdentityError(f"{ca_keyf} is not the key of {ca_crt}")
    else:
        ca_key, ca_cert = create_ca()
        write_private(ca_keyf, _key_pem(ca_key))
        write_private(ca_crt, _cert_pem(ca_cert), 0o644)
        log.info("created the directory's CA in %s (fingerprint %s)", directory,
                 fingerprint(ca_cert.public_key()))
    server_crt = os.path.join(directory, "server.crt")
    server_key = os.path.join(directory, "server.key")
    ips = _server_ips(host)
    current = None
    if os.path.exists(server_crt) and os.path.exists(server_key):
        _check_private(server_key)
        try:
            current = _load_cert(server_crt)
            key = _load_key(server_key)
            if not _same_key(key.public_key(), current.public_key()):
                current = None
        except IdentityError:
            current = None
    if current is None or not _server_ok(current, ca_cert, ips):
        key = ed25519.Ed25519PrivateKey.generate()
        cert = issue_certificate(ca_key, ca_cert, key.public_key(),
                                 common_name="eurechat directory", uris=[DIRECTORY_URI],
                                 dns_names=["localhost"], ips=ips, days=SERVER_DAYS,
                                 client=True)
        # The key first: a crash in between leaves a certificate that does
        # not match its key, which the next start replaces.
        write_private(server_key, _key_pem(key))
        write_private(server_crt, _cert_pem(cert) + _cert_pem(ca_cert), 0o644)
        log.info("issued the directory's server certificate (valid until %s)",
                 _not_after(cert).strftime("%Y-%m-%d"))
    ca_pem = _cert_pem(ca_cert)
    return DirectoryIdentity(directory=directory, ca_cert=ca_cert, ca_pem=ca_pem,
                             ca_key=ca_key, cert_file=server_crt, key_file=server_key,
                             fingerprint=fingerprint(ca_cert.public_key()))


def stored_fingerprint(data_dir: str) -> Optional[str]:
    """The fingerprint of the CA stored in ``data_dir`` (None: no identity yet)."""
    path = os.path.join(tls_dir(data_dir), "ca.crt")
    if not os.path.exists(path):
        return None
    return fingerprint(_load_cert(path).public_key())
