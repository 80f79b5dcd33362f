#!/usr/bin/env python3
"""Write the seed corpora ``fuzz/corpus/<target>/`` from the test suite's examples.

Every ``bytes`` literal in the tests of a target's area is an example of what
the network sends (or of how it goes wrong); each becomes one or two inputs in
that target's layout (see the target's docstring), so the fuzzer starts from
the cases people thought of.  Deterministic: the same tests give the same
files, named by a hash of their content.  Run it again after the tests
change: ``.venv/bin/python fuzz/seeds.py``.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
os.environ.setdefault("EURECHAT_FUZZ_ENGINE", "replay")  # no instrumentation needed here

import target_cert_request  # noqa: E402
import target_directory_reply  # noqa: E402
import target_framing  # noqa: E402
import target_peer  # noqa: E402
import target_server  # noqa: E402
import target_session  # noqa: E402
import target_sniff  # noqa: E402

from eurechat.directory.session import Result  # noqa: E402

#: Most seeds per target: the corpus is committed, so it stays small.
MAX_SEEDS = 400
MAX_SEED_BYTES = 2048


def literals(patterns) -> list:
    """Every bytes literal of the matching test files, shortest first."""
    found = set()
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(ROOT, "tests", pattern), recursive=True)):
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
                    if 0 < len(node.value) <= MAX_SEED_BYTES:
                        found.add(node.value)
    return sorted(found, key=lambda b: (len(b), b))


def framing_seeds() -> list:
    out = []
    examples = literals(["framing/**/*.py"])
    for lit in examples:
        out.append(target_framing.seed(lit))
        if b"\n" in lit and len(lit) > 2:
            out.append(target_framing.seed(lit, cuts=[len(lit) // 2]))
    # Small limits, so the fuzzer starts next to every limit's edge.
    for lit in examples[-20:]:
        out.append(target_framing.seed(lit, max_payload=5, max_header=9, max_args=2))
    return out


LOGIN = [("feed", b"USER 0 alice\n"), ("feed", b"PASS 0 password1\n"), ("resume", Result.OK)]


def session_seeds() -> list:
    out = [target_session.seed(LOGIN + [
        ("feed", b"BIND 0 127.0.0.1 5555\n"), ("resume", Result.OK),
        ("feed", b"QUERY 0\nQUERY 0 bob\nPING 0 x\nLEAVE 0\n"), ("resume", Result.OK)]),
        target_session.seed([("feed", b"REGISTER 0 alice secret-pass\n"),
                             ("resume", Result.EXISTS), ("feed", b"USER 0 alice\n"),
                             ("feed", b"PASS 11\nsecret-pass"), ("resume", Result.THROTTLED)]),
        target_session.seed([("feed", b"CACERT 0\nHELLO 0 eurechat/2\nHELLO 0 eurechat/3\n")]
                            + LOGIN + [("feed", b"CACERT 0\nQUERY 0\nQUERY 0 bob\nCERT 3\nabc")]),
        # TLS, opened with alice's certificate: login by certificate, then CERT.
        target_session.seed([("feed", b"USER 0 alice\n"), ("resume", Result.OK),
                             ("feed", b"CERT 5\nPEM..CERT 5 reset\nPEM..QUERY 0\n"),
                             ("resume", Result.OK), ("resume", Result.INVALID)], transport=1 | 2),
        # TLS with mallory's certificate, logging in as alice by password.
        target_session.seed(LOGIN + [("feed", b"CERT 4 reset\nPEM.CERT 4\nPEM."),
                                     ("resume", Result.OK), ("resume", Result.OK)],
                            transport=1 | 4),
        # TLS without a client certificate; a certificate naming no user.
        target_session.seed(LOGIN + [("feed", b"CERT 4\nPEM.")], transport=1),
        target_session.seed([("feed", b"USER 0 alice\n")] + LOGIN[1:], transport=1 | 6)]
    for lit in literals(["directory/test_session.py",
                         "directory/test_protocol.py",
                         "directory/test_transcript.py"]):
        if b"\n" not in lit:
            continue
        out.append(target_session.seed([("feed", lit), ("resume", Result.OK)]))
        out.append(target_session.seed(LOGIN + [("feed", lit), ("resume", Result.OK)]))
    return out


def server_seeds() -> list:
    session = (b"QUERY 0\nPING 0 x\nBIND 0 127.0.0.1 5556\nQUERY 0 alice\nLEAVE 0\n"
               b"HELLO 0 eurechat/2\nCACERT 0\n")
    out = []
    for tls in (False, True):
        out += [target_server.seed(session, login=True, tls=tls),
                target_server.seed(b"HELLO 0 eurechat/2\nCACERT 0\nUSER 0 alice\n"
                                   b"PASS 14\nalice-passwordQUERY 0\n", tls=tls),
                target_server.seed(b"REGISTER 0 bob bob-password\nUSER 0 bob\n"
                                   b"PASS 0 bob-password\n", tls=tls)]
    for lit in literals(["directory/test_session.py", "directory/test_protocol.py",
                         "directory/test_transcript.py"]):
        if b"\n" in lit and lit[:1].isupper():
            # Plaintext only: a TLS input costs ten plaintext ones, and the
            # fuzzer sets the TLS bit on any of these by itself.
            out.append(target_server.seed(lit, login=lit[:4] not in (b"USER", b"LOGI", b"REGI")))
    return out


def sniff_seeds() -> list:
    """Every listed source under every policy, with a plaintext first byte, a
    TLS record and nothing; and source texts the table does not list."""
    out = []
    for source in range(len(target_sniff.SOURCES)):
        for policy in range(3):
            out.append(target_sniff.seed(b"PING 0\n", policy, source))
        out.append(target_sniff.seed(b"\x16\x03\x01\x00\xc0", 0, source))
    out.append(target_sniff.seed(b"", 1, 0))
    for text in (b"127.000.000.001", b"0:0:0:0:0:0:0:1", b"::ffff:7f00:1", b"::1%25",
                 b"\xff\xfe", b"1" * 40):
        out.append(bytes([1, 0x80, len(text)]) + text + b"USER 0 x\n")
    return out


def peer_seeds() -> list:
    out = []
    for lit in literals(["peer/test_protocol.py", "framing/test_api.py"]):
        if b"\n" not in lit:
            continue
        out.append(target_peer.seed(lit))
        out.append(target_peer.seed(lit, flags=1 | 2 * 2))  # pinned to bob, 10-byte limit
    return out


def cert_request_seeds() -> list:
    """Requests like those of tests/tls: Ed25519 (accepted), other key types and a
    broken signature (refused), each as PEM and as DER.  Keys are made afresh, so
    running this again changes these files (not what they cover)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.x509.oid import NameOID

    def request(key, algorithm=None) -> bytes:
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")]))
               .sign(key, algorithm))
        return csr.public_bytes(serialization.Encoding.DER)

    ders = [request(ed25519.Ed25519PrivateKey.generate()),
            request(ed448.Ed448PrivateKey.generate()),
            request(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()),
            request(rsa.generate_private_key(65537, 1024), hashes.SHA256())]
    broken = bytearray(ders[0])
    broken[-1] ^= 1  # the last byte of the signature
    ders.append(bytes(broken))
    out = []
    for der in ders:
        out.append(target_cert_request.seed(der, der=True))
        out.append(target_cert_request.seed(target_cert_request.pem(der)))
    return out


def directory_reply_seeds() -> list:
    out = [target_directory_reply.seed(
        b"ACK 26\nsuccessfully authenticatedRESULT 39\nalice,127.0.0.2,5000\nbob,127.0.0.1,6000"
        b"PING 0 n1\nRESULT 0\nERR 29\nmax number of clients reached", cuts=[30])]
    for lit in literals(["directory/test_transcript.py", "peer/test_directory_client.py"]):
        if b"\n" in lit and lit[:1].isupper():
            out.append(target_directory_reply.seed(lit))
    return out


SEEDS = {"framing": framing_seeds, "directory_reply": directory_reply_seeds,
         "server": server_seeds, "sniff": sniff_seeds, "session": session_seeds, "peer": peer_seeds,
         "cert_request": cert_request_seeds}


def write(target: str, seeds: list) -> int:
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.startswith("seed-"):
            os.remove(os.path.join(folder, name))
    unique = {hashlib.sha1(s).hexdigest()[:16]: s for s in seeds}
    for digest, data in sorted(unique.items())[:MAX_SEEDS]:
        with open(os.path.join(folder, f"seed-{digest}"), "wb") as f:
            f.write(data)
    return min(len(unique), MAX_SEEDS)


def main() -> None:
    for target, make in SEEDS.items():
        print(f"{target}: {write(target, make())} seeds")


if __name__ == "__main__":
    main()
