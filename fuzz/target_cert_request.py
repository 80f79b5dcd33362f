"""Fuzz target: the certificate request a client sends with ``CERT`` (SPEC §5.3).

``eurechat.tls.enrolment.load_request`` gets the request as it arrives, and
must either return a checked Ed25519 key or refuse with ``RequestRefused``
(which the directory answers with ``ERR``); any other exception would escape
the session.  A request it accepts must really be an Ed25519 key whose
signature verifies, with a well-formed fingerprint, and ``decide`` must
then give the documented answer for every combination of enrolled key,
session certificate, password and ``reset``.

Input layout (``seed()`` writes it): byte 0 bit 0 says the rest is DER, to
be wrapped in PEM here (so mutations reach the ASN.1 structure rather than
the base64 around it); otherwise the rest is sent as it is.
"""

from __future__ import annotations

import base64
import sys

import common
from common import Finding, check

common.instrumented_imports(["eurechat.tls.enrolment", "eurechat.tls.fingerprint"])

from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: E402

from eurechat.tls.enrolment import Change, RequestRefused, decide, load_request  # noqa: E402
from eurechat.tls.fingerprint import is_fingerprint  # noqa: E402

OTHER = "sha256:" + "A" * 43


def pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return (b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"\n".join(lines)
            + b"\n-----END CERTIFICATE REQUEST-----\n")


def seed(request: bytes, der: bool = False) -> bytes:
    return bytes([1 if der else 0]) + request


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris calls
    if not data:
        return
    body = data[1:]
    request = pem(body) if data[0] & 1 else body
    try:
        key = load_request(request)
    except RequestRefused as exc:
        check(str(exc) != "", "a refusal without a reason")
        return
    except Exception as exc:
        raise Finding(f"load_request raised {exc.__class__.__name__}: {exc}") from exc
    check(isinstance(key.public_key, ed25519.Ed25519PublicKey), f"accepted {key.public_key!r}")
    check(is_fingerprint(key.fingerprint), f"bad fingerprint {key.fingerprint!r}")
    fp = key.fingerprint
    for enrolled in (None, fp, OTHER):
        for session_key in (None, fp, OTHER):
            for by_password in (False, True):
                for reset in (False, True):
                    try:
                        change = decide("alice", enrolled, fp, session_key=session_key,
                                        by_password=by_password, reset=reset)
                    except RequestRefused:
                        check(enrolled == OTHER and session_key != OTHER
                              and not (reset and by_password),
                              f"refused {enrolled}, {session_key}, {by_password}, {reset}")
                        continue
                    expected = (Change.ENROL if enrolled is None else
                                Change.RENEW if enrolled == fp else
                                Change.ROTATE if session_key == enrolled else Change.RESET)
                    check(change is expected, f"{change} for {enrolled}, {session_key}, "
                                              f"{by_password}, {reset}")


if __name__ == "__main__":
    common.main(TestOneInput, sys.argv)
