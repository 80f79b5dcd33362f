"""The peer's listening port serves TLS and plaintext (SPEC §5.1): the first
byte decides, ``--plaintext`` says who may use plaintext.  A real peer
process (its directory unreachable: it listens all the same), raw clients."""

from __future__ import annotations

import socket
import ssl
import subprocess

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from eurechat.framing import Decoder, Message
from eurechat.tls.fingerprint import fingerprint, fingerprint_of_cert
from support.client import closed_port
from support.peers import FAST, PASSWORD, PeerProc, peer_cmd
from support.processes import start_process, test_env


@pytest.fixture
def start(tmp_path):
    procs = []

    def run(*extra: str) -> PeerProc:
        argv = peer_cmd() + ["--user", "alice", "--directory", f"127.0.0.1:{closed_port()}",
                             "--data-dir", str(tmp_path / "alice"), "--json", *extra]
        proc = start_process(argv, ready=r'"event": "ready"',
                             env=test_env(EURECHAT_PASSWORD=PASSWORD, **FAST),
                             stdin=subprocess.PIPE, timeout=30)
        procs.append(proc)
        return PeerProc(proc)

    try:
        yield run
    finally:
        for p in procs:
            p.stop(timeout=5)


def listen_address(peer: PeerProc):
    host, port = peer.events("ready")[0]["listen"].rsplit(":", 1)
    return host, int(port)


def tls_client() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def exchange(sock, request: bytes) -> Message:
    sock.sendall(request)
    dec = Decoder()
    while True:
        data = sock.recv(65536)
        assert data, "closed before answering"
        items = dec.feed(data)
        if items:
            return items[0]


def read_all(sock) -> bytes:
    out = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        out += data
    return out


def test_tls_and_plaintext_on_one_port(start, tmp_path):
    alice = start()
    addr = listen_address(alice)
    with socket.create_connection(addr, timeout=10) as raw:
        with tls_client().wrap_socket(raw) as tls:
            assert tls.version() == "TLSv1.3"
            assert exchange(tls, b"PING 0 tls-nonce\n") == Message("PONG", ("tls-nonce",))
            der = tls.getpeercert(binary_form=True)
    key = load_pem_private_key((tmp_path / "alice" / "identity.key").read_bytes(), None)
    assert fingerprint_of_cert(der) == fingerprint(key.public_key())
    with socket.create_connection(addr, timeout=10) as plain:    # loopback: allowed
        assert exchange(plain, b"PING 0 plain\n") == Message("PONG", ("plain",))


def test_a_message_over_tls_is_delivered_and_acknowledged(start):
    alice = start()
    with socket.create_connection(listen_address(alice), timeout=10) as raw:
        with tls_client().wrap_socket(raw) as tls:
            reply = exchange(tls, bytes(Message("MESSAGE", ("bob", "m1"), b"hi over TLS")))
    assert reply.type == "ACK" and reply.args == ("m1",)
    got = alice.wait_event("message")
    assert (got["from"], got["text"]) == ("bob", "hi over TLS")


def test_plaintext_off_refuses_plaintext_with_exactly_tls_required(start):
    alice = start("--plaintext", "off")
    addr = listen_address(alice)
    with socket.create_connection(addr, timeout=10) as plain:
        plain.sendall(b"PING 0 plain\n")
        assert read_all(plain) == b"ERR 12\nTLS required"
    with socket.create_connection(addr, timeout=10) as raw:
        with tls_client().wrap_socket(raw) as tls:
            assert exchange(tls, b"PING 0 t\n") == Message("PONG", ("t",))
