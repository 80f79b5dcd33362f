"""Which directory a peer trusts, and how it checks one (SPEC §5.2).

A peer does not check host names: it pins the directory's CA.  The users'
certificates come from that same CA (§5.3), so a certificate that merely
chains to it proves nothing about being the directory; the server
certificate must also carry the subject alternative name URI
``eurechat:directory``.  Both are checked after the handshake and before a
single credential is written.

Trust, in this order: a CA certificate the person gave (``--directory-ca``),
a fingerprint they gave (``--directory-fingerprint``), else trust on first
use: the CA first seen for ``HOST:PORT`` is kept in
``<data-dir>/known_directories`` (the PEM beside it, in
``known_directories.d/``) and every later session must match it.

Everything here is synchronous and free of I/O except ``KnownDirectories``;
the peer's directory client does the networking.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import ssl
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Tuple, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from .enrolment import DIRECTORY_URI
from .fingerprint import PREFIX, fingerprint_of_cert, is_fingerprint
from .identity import write_private

try:  # the lock that keeps two peers on one data directory from losing a pin
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DIRECTORY_URI", "TrustError", "TrustMismatch", "Expectation", "DirectoryTrust",
    "KnownDirectories", "load_certificate", "read_ca_file", "directory_cert_problem",
    "client_context", "describe_identity",
]

log = logging.getLogger("eurechat.tls.trust")

KNOWN_FILE = "known_directories"
KNOWN_PEMS = "known_directories.d"


class TrustError(Exception):
    """The directory's identity cannot be established: send no credentials."""


class TrustMismatch(TrustError):
    """The directory is not the one this peer trusts.

    ``str()`` is the one line shown to the person: where, the fingerprint
    expected and the one found."""

    def __init__(self, where: str, expected: Optional[str], got: str, detail: str = "") -> None:
        self.where, self.expected, self.got, self.detail = where, expected, got, detail
        if expected is None:   # first contact, and what it shows is inconsistent
            text = f"directory {where} cannot be trusted: got {got}"
        else:
            text = (f"directory {where} is not the one this peer trusts: expected CA "
                    f"{expected}, got {got}")
        if detail:
            text += f" ({detail})"
        super().__init__(text + "; no credentials were sent")


def load_certificate(data: bytes) -> x509.Certificate:
    """One certificate, PEM or DER.  Raises ``ValueError`` on anything else."""
    data = bytes(data)
    if data.lstrip().startswith(b"-----"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.PEM)


def read_ca_file(path: Union[str, os.PathLike]) -> bytes:
    """The PEM of the CA certificate in ``path`` (``--directory-ca``).

    Raises ``TrustError`` with one line naming the file and the problem."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TrustError(f"cannot read the directory CA {path}: {exc.strerror or exc}") from None
    try:
        return _pem(load_certificate(data))
    except ValueError:
        raise TrustError(f"{path} is not a certificate (PEM or DER)") from None


def _uris(cert: x509.Certificate) -> Tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def directory_cert_problem(server: x509.Certificate, ca: x509.Certificate,
                           now: Optional[datetime.datetime] = None) -> Optional[str]:
    """Why ``server`` is not the directory certificate of ``ca``, or None.

    Checked: issued by ``ca`` (name and signature), inside its validity
    window, carrying ``eurechat:directory``.  The TLS handshake has already
    proved that the server holds the certificate's key."""
    try:
        server.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "its certificate is not issued by that CA"
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if not server.not_valid_before_utc <= now <= server.not_valid_after_utc:
        return "its certificate is not valid now"
    if DIRECTORY_URI not in _uris(server):
        return f"its certificate is not a directory certificate (no {DIRECTORY_URI})"
    return None


def describe_identity(server_der: bytes, ca_pem: Optional[bytes]) -> Tuple[str, str]:
    """(fingerprint, detail) naming what a server presented, for a mismatch line.

    The fingerprint is its CA's when the server certificate is issued by the
    CA it sent (``CACERT``); otherwise the server certificate's own key's,
    and ``detail`` says so."""
    server = load_certificate(server_der)
    if ca_pem is not None:
        try:
            ca = load_certificate(ca_pem)
        except ValueError:
            ca = None
        if ca is not None:
            problem = directory_cert_problem(server, ca)
            if problem is None or "issued" not in problem:
                return fingerprint_of_cert(ca), problem or ""
    return fingerprint_of_cert(server), ("the key of a server certificate that is not issued "
                                         "by the CA the server sends")


def client_context(ca_pem: Optional[bytes]) -> ssl.SSLContext:
    """The TLS 1.3 context of a peer's directory session.

    With ``ca_pem`` the handshake itself requires a chain to that CA (host
    names are not checked: the CA is pinned, and the directory URI is checked
    after the handshake).  Without it the handshake verifies nothing: that
    session may only fetch ``CACERT`` and check it before anything else."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    if ca_pem is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
    return ctx


class Expectation(NamedTuple):
    """What a session with one directory must find.

    ``ca_pem``: verify the handshake against it.  ``fingerprint`` alone:
    fetch ``CACERT`` and compare.  Neither: first contact (trust on first use).
    """

    fingerprint: Optional[str]
    ca_pem: Optional[bytes]
    source: str    # "ca-file", "fingerprint", "known", "first-use"


class KnownDirectories:
    """``<data-dir>/known_directories``: ``HOST:PORT sha256:...`` per line.

    The CA certificate of each is kept in ``known_directories.d/`` under its
    fingerprint, so a later session can verify the handshake against it.  A
    missing or damaged PEM is not a reason to trust anew: the fingerprint
    still binds, and the CA is fetched and compared again.  Files are
    written whole and renamed into place (mode 0600), under a lock, so two
    peers sharing a data directory do not lose each other's pins.
    """

    def __init__(self, data_dir: Union[str, os.PathLike]) -> None:
        self.dir = Path(data_dir)
        self.path = self.dir / KNOWN_FILE
        self.pems = self.dir / KNOWN_PEMS

    def _read(self) -> Dict[str, str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        pins: Dict[str, str] = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2 or not is_fingerprint(parts[1]):
                log.warning("%s line %d is not 'HOST:PORT sha256:...': ignored", self.path, n)
                continue
            pins[parts[0]] = parts[1]
        return pins

    def _pem_path(self, fp: str) -> Path:
        return self.pems / (fp[len(PREFIX):] + ".pem")

    def get(self, where: str) -> Optional[Expectation]:
        fp = self._read().get(where)
        if fp is None:
            return None
        pem: Optional[bytes] = None
        with contextlib.suppress(OSError, ValueError):
            cert = load_certificate(self._pem_path(fp).read_bytes())
            if fingerprint_of_cert(cert) == fp:
                pem = _pem(cert)
        return Expectation(fp, pem, "known")

    def add(self, where: str, ca_pem: bytes) -> str:
        """Pin ``where`` to the CA in ``ca_pem``; returns its fingerprint."""
        fp = fingerprint_of_cert(load_certificate(ca_pem))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pems.mkdir(mode=0o700, exist_ok=True)
        with self._locked():
            write_private(str(self._pem_path(fp)), ca_pem)
            pins = self._read()
            pins[where] = fp
            body = "# HOST:PORT and the fingerprint of the directory CA this peer trusts there;\n" \
                   f"# the CA certificates are in {KNOWN_PEMS}/.  Delete a line to trust anew.\n"
            body += "".join(f"{w} {f}\n" for w, f in sorted(pins.items()))
            write_private(str(self.path), body.encode("utf-8"))
        return fp

    @contextlib.contextmanager
    def _locked(self):
        if fcntl is None:  # pragma: no cover
            yield
            return
        fd = os.open(self.dir / (KNOWN_FILE + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


class DirectoryTrust:
    """A peer's trust settings and the decisions made with them.

    ``ca_pem`` (``--directory-ca``) wins over ``fingerprint``
    (``--directory-fingerprint``), which wins over ``known`` (trust on first
    use).  With none of them every TLS directory is refused."""

    def __init__(self, *, ca_pem: Optional[bytes] = None, fingerprint: Optional[str] = None,
                 known: Optional[KnownDirectories] = None) -> None:
        if fingerprint is not None and not is_fingerprint(fingerprint):
            raise TrustError(f"not a fingerprint: {fingerprint!r} (expected sha256: and 43 "
                             "characters, as 'eurechat-directory fingerprint' prints)")
        self.ca_pem = _pem(load_certificate(ca_pem)) if ca_pem is not None else None
        self.ca_fingerprint = (fingerprint_of_cert(load_certificate(ca_pem))
                               if ca_pem is not None else None)
        self.fingerprint = fingerprint
        self.known = known

    @property
    def pinned_by_option(self) -> bool:
        return self.ca_pem is not None or self.fingerprint is not None

    def expect(self, where: str) -> Expectation:
        """What the directory at ``where`` (``HOST:PORT``) must present."""
        if self.ca_pem is not None:
            return Expectation(self.ca_fingerprint, self.ca_pem, "ca-file")
        if self.fingerprint is not None:
            return Expectation(self.fingerprint, None, "fingerprint")
        if self.known is not None:
            known = self.known.get(where)
            if known is not None:
                return known
        return Expectation(None, None, "first-use")

    def check_verified(self, where: str, expected: Expectation, server_der: bytes) -> None:
        """After a handshake verified against ``expected.ca_pem``: the server
        certificate must also be the directory's (not a user's of that CA)."""
        assert expected.ca_pem is not None and expected.fingerprint is not None
        problem = directory_cert_problem(load_certificate(server_der),
                                         load_certificate(expected.ca_pem))
        if problem is not None:
            got, _ = describe_identity(server_der, expected.ca_pem)
            raise TrustMismatch(where, expected.fingerprint, got, problem)

    def accept_ca(self, where: str, expected: Expectation, server_der: bytes,
                  ca_pem: bytes) -> Tuple[str, bool]:
        """After an unverified handshake and ``CACERT``: decide.

        Returns (CA fingerprint, pinned now?).  Raises ``TrustMismatch``
        when the CA is not the expected one or the server certificate is not
        its directory certificate; ``TrustError`` when ``ca_pem`` is not a
        certificate."""
        try:
            ca = load_certificate(ca_pem)
        except ValueError:
            raise TrustError(f"directory {where} answered CACERT with something that is "
                             "not a certificate; no credentials were sent") from None
        server = load_certificate(server_der)
        got = fingerprint_of_cert(ca)
        problem = directory_cert_problem(server, ca)
        if problem is not None:
            got, detail = describe_identity(server_der, ca_pem)
            raise TrustMismatch(where, expected.fingerprint, got, detail or problem)
        if expected.fingerprint is not None:
            if got != expected.fingerprint:
                raise TrustMismatch(where, expected.fingerprint, got)
            if expected.source == "known" and self.known is not None:
                self.known.add(where, _pem(ca))    # its PEM was lost: keep it again
            return got, False
        if self.known is None:
            raise TrustError(f"no way to trust directory {where} (CA {got}): no CA, "
                             "fingerprint or store of known directories was given; "
                             "no credentials were sent")
        self.known.add(where, _pem(ca))
        return got, True
