"""SSL contexts for eurechat links: TLS 1.3 only, from the ``ssl`` module.

Why TLS 1.3 only: every end is eurechat (or ``openssl s_client``), so there
is no old client to accommodate; 1.3 has no renegotiation, no static-RSA or
CBC suites to configure away, and one round trip to the first request.
"""

from __future__ import annotations

import functools
import ssl

from .identity import DirectoryIdentity

__all__ = ["server_context", "probe_context"]


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


@functools.cache
def probe_context() -> ssl.SSLContext:
    """The directory's client context for liveness and BIND probes of peers'
    TLS listeners.  It does not verify the listener yet: a peer's listener
    certificate is issued by the directory CA only once users have keys
    (SPEC §5.3-§5.4); until then the probe encrypts but cannot authenticate.
    One context per process (making one costs more than a handshake)."""
    context = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
