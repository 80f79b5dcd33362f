"""TLS for tests: client contexts that trust a directory's CA, and its checks.

A peer does not check host names: it trusts the directory's CA and requires
the URI ``eurechat:directory`` in the server certificate (SPEC §5.2).  These
helpers do the same, so the tests check what a peer would.

- ``trusting(ca_pem)``: a TLS 1.3 client context trusting only that CA
- ``unverified()``: a TLS 1.3 client context that checks nothing (a capture
  or a handshake test where trust is not the point)
- ``server_uris(sock)``: the SAN URIs of the certificate a TLS socket got
- ``ca_pem_of(data_dir)``: the CA certificate a directory keeps in DIR/tls
- ``listener_context(tmp_dir)``: a TLS 1.3 server context with a throwaway
  certificate (a peer's TLS listener, for BIND checks and liveness probes)
"""

from __future__ import annotations

import os
import ssl
from typing import List

from cryptography import x509

__all__ = ["trusting", "unverified", "server_uris", "ca_pem_of", "listener_context"]


def trusting(ca_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # eurechat pins the CA, not a host name
    ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
    return ctx


def unverified() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def server_uris(sock: ssl.SSLSocket) -> List[str]:
    cert = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def ca_pem_of(data_dir: str) -> bytes:
    with open(os.path.join(data_dir, "tls", "ca.crt"), "rb") as f:
        return f.read()


def listener_context(tmp_dir: str) -> ssl.SSLContext:
    from eurechat.tls.contexts import server_context
    from eurechat.tls.identity import load_directory_identity
    ctx = server_context(load_directory_identity(tmp_dir))
    # A stand-in for a peer's listener: it does not ask its clients for a
    # certificate (a directory's server context does).
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
