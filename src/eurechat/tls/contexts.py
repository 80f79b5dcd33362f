"""SSL contexts for eurechat links: TLS 1.3 only, from the ``ssl`` module.

Why TLS 1.3 only: every end is eurechat (or ``openssl s_client``), so there
is no old client to accommodate; 1.3 has no renegotiation, no static-RSA or
CBC suites to configure away, and one round trip to the first request.
"""

from __future__ import annotations

import ssl
from typing import Optional

from cryptography import x509

from .enrolment import user_of
from .fingerprint import fingerprint
from .identity import DirectoryIdentity

__all__ = ["server_context", "probe_context", "use_probe_identity", "listener_problem"]


def _tls13(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    # No compression (CRIME); no renegotiation exists in 1.3.
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def server_context(identity: DirectoryIdentity) -> ssl.SSLContext:
    """The directory's listening context: its server certificate (with the CA
    certificate behind it, so a client can see which CA it is talking to).

    A client may present a certificate (login by certificate, a rotation the
    old key authorises: SPEC §5.3); one that does not chain to the directory
    CA, or has expired, fails the handshake.  Clients without one (a first
    login, ``openssl s_client``) are served as before."""
    context = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(identity.cert_file, identity.key_file)
    # No session tickets: eurechat clients never resume a session (each
    # connection is a full handshake), so tickets would only cost every
    # handshake two encryptions and a write.
    context.num_tickets = 0
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cadata=identity.ca_pem.decode("ascii"))
    return context


class _Probes:
    """The probe contexts of this process: one to reach listeners whose user
    has no enrolled key (encrypted, not verified: such a listener has no
    certificate from the directory CA), one that verifies a listener's chain
    to the CA.  Both present the directory's own certificate
    (``eurechat:directory``), so a peer can tell the directory's probes
    apart and answer them only with ``PONG``."""

    def __init__(self, identity: Optional[DirectoryIdentity] = None) -> None:
        self.unverified = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        self.unverified.check_hostname = False
        self.unverified.verify_mode = ssl.CERT_NONE
        self.verified: Optional[ssl.SSLContext] = None
        if identity is not None:
            self.unverified.load_cert_chain(identity.cert_file, identity.key_file)
            self.verified = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
            self.verified.check_hostname = False  # the user is checked by name, below
            self.verified.load_verify_locations(cadata=identity.ca_pem.decode("ascii"))
            self.verified.load_cert_chain(identity.cert_file, identity.key_file)


_probes = [_Probes()]


def use_probe_identity(identity: DirectoryIdentity) -> None:
    """Probes of this process present ``identity``'s certificate and verify
    listeners against its CA (called where the identity is loaded: one
    context each per process, since making one costs more than a handshake)."""
    _probes[0] = _Probes(identity)


def probe_context(verify: bool = False) -> ssl.SSLContext:
    """The client context for a liveness or BIND probe of a TLS listener;
    ``verify`` for a user with an enrolled key (``listener_problem`` then
    checks the certificate is that user's)."""
    probes = _probes[0]
    if verify and probes.verified is not None:
        return probes.verified
    return probes.unverified


def listener_problem(ssl_object: Optional[ssl.SSLObject], name: str,
                     fingerprint_: str) -> Optional[str]:
    """Why a verified listener's certificate is not ``name``'s enrolled key
    (None: it is).  Nobody can publish, or keep, another user's endpoint."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return "the listener presented no certificate"
    cert = x509.load_der_x509_certificate(der)
    user = user_of(cert)
    if user != name:
        return f"the listener's certificate names {user or 'no user'}, not {name}"
    got = fingerprint(cert.public_key())
    if got != fingerprint_:
        return f"the listener's key is {got}, not the enrolled {fingerprint_}"
    return None
