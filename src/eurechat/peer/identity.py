"""The peer's identity key and the TLS context of its listener (SPEC §5.3, §5.1).

Each data directory holds one Ed25519 key, ``identity.key`` (mode 0600),
created on first start.  Its listener serves TLS with a self-signed
certificate of that key, so that the directory's probes (BIND check,
liveness ``PING``) and other eurechat peers can reach it over TLS; nobody
verifies that certificate yet (a certificate issued by the directory CA
replaces it once keys are bound to names).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import ssl
import stat
import tempfile
from pathlib import Path
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from ..tls.fingerprint import fingerprint

__all__ = ["IDENTITY_FILE", "IdentityError", "load_identity_key", "listener_context"]

log = logging.getLogger("eurechat.peer.identity")

IDENTITY_FILE = "identity.key"


class IdentityError(Exception):
    """The identity key cannot be read or created; one line says why."""


def load_identity_key(data_dir: Union[str, os.PathLike]) -> ed25519.Ed25519PrivateKey:
    """The data directory's identity key, created (0600) if there is none.

    Created once even when two peers start on one data directory at the same
    moment: the key is written to a private temporary file and linked into
    place, which fails for the second; that one reads the first one's key."""
    path = Path(data_dir) / IDENTITY_FILE
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".identity.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return _read(path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    except OSError as exc:
        raise IdentityError(f"cannot create {path}: {exc.strerror or exc}") from None
    log.info("created the identity key %s (%s)", path, fingerprint(key.public_key()))
    return key


def _read(path: Path) -> ed25519.Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror or exc}") from None
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        log.warning("%s was readable by other users (mode %o); now 0600", path, mode)
        os.chmod(path, 0o600)
    try:
        key = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError):
        raise IdentityError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise IdentityError(f"{path} is not an Ed25519 key")
    return key


def listener_context(key: ed25519.Ed25519PrivateKey,
                     data_dir: Union[str, os.PathLike]) -> ssl.SSLContext:
    """TLS 1.3 server context presenting a fresh self-signed certificate of ``key``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eurechat peer")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .sign(key, None))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_COMPRESSION
    # load_cert_chain reads files: the certificate (public) goes to a
    # temporary file, the key is read from where it is kept.
    with tempfile.TemporaryDirectory() as tmp:
        cert_file = os.path.join(tmp, "listener.crt")
        with open(cert_file, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        ctx.load_cert_chain(cert_file, str(Path(data_dir) / IDENTITY_FILE))
    return ctx
