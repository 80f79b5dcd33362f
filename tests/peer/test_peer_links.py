"""Peer links between enrolled peers (SPEC §5.4), through the real CLIs and
real TLS: what a peer's listener presents, and whom a dialler accepts."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import threading

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from eurechat.framing import Message
from eurechat.peer import Peer
from eurechat.peer.credentials import Credentials
from eurechat.peer.pins import Pins
from eurechat.tls.enrolment import issue_user_certificate
from eurechat.tls.fingerprint import fingerprint
from eurechat.tls.identity import load_directory_identity
from support.client import FramedClient, closed_port
from support.enrol import enrol, v2_session
from support.peers import PASSWORD
from support.relay import Relay
from support.tls import ca_pem_of, trusting
from support.waits import request_until, run

_PEM = serialization.Encoding.PEM


def test_an_enrolled_peer_presents_its_certificate_so_it_is_bound(cluster):
    """The directory's BIND check requires an enrolled user's listener to
    present that user's certificate: with the self-signed one of the
    identity key alone, alice would never be listed."""
    fp = enrol(cluster.directory, cluster.tmp / "peers" / "alice", "alice", PASSWORD)
    alice = cluster.peer("alice", register=False)
    port = alice.events("ready")[0]["listen"].rsplit(":", 1)[1]
    with v2_session(cluster.directory, "querier", PASSWORD, register=True) as c:
        want = f"alice,127.0.0.1,{port},{fp}".encode()
        reply = request_until(c, ("QUERY", "alice"), lambda m: m.payload == want, timeout=20)
    assert reply.payload == want


def enrolled(cluster, *names: str) -> dict:
    return {n: enrol(cluster.directory, cluster.tmp / "peers" / n, n, PASSWORD) for n in names}


def test_enrolled_peers_chat_over_authenticated_links(cluster):
    enrolled(cluster, "alice", "bob")
    alice = cluster.peer("alice", register=False)
    bob = cluster.peer("bob", register=False)
    alice.cmd("/msg bob hello bob")
    m = bob.wait_event("message", text="hello bob")
    assert m["from"] == "alice" and m["verified"] is True
    alice.wait_event("delivered", to="bob")
    bob.cmd("/msg alice hi alice")
    assert alice.wait_event("message", text="hi alice")["verified"] is True


def _bob_replaced(cluster, listen_port: int):
    """alice knows bob (enrolled) at ``listen_port`` from a lookup she keeps;
    bob is killed there.  Returns alice."""
    enrolled(cluster, "alice", "bob", "mallory")
    bob = cluster.peer("bob", "--listen", f"127.0.0.1:{listen_port}", register=False)
    alice = cluster.peer("alice", register=False, env=cluster.env(EURECHAT_QUERY_TTL="600"))
    alice.cmd("/who bob")
    assert alice.wait_event("who")["users"][0]["port"] == listen_port
    bob.kill9()
    return alice


def test_a_listener_with_another_users_certificate_gets_nothing(cluster):
    port = closed_port()
    alice = _bob_replaced(cluster, port)
    mallory = cluster.peer("mallory", "--listen", f"127.0.0.1:{port}", register=False)
    alice.cmd("/msg bob for bob only")
    q = alice.wait_event("queued", to="bob")
    err = alice.wait_event("error", timeout=20)
    assert "'mallory'" in err["text"] and "nothing was sent" in err["text"]
    assert mallory.quit() == 0
    assert mallory.events("message") == []
    assert alice.events("delivered") == []
    bob = cluster.peer("bob", register=False)
    m = bob.wait_event("message", text="for bob only", timeout=30)
    assert m["id"] == q["id"] and m["verified"] is True
    alice.wait_event("delivered", to="bob", timeout=30)
    bob.cmd("/pending")
    bob.wait_event("pending")
    assert [e["text"] for e in bob.events("message")] == ["for bob only"]


def test_a_self_signed_certificate_naming_the_recipient_is_refused(cluster, tmp_path):
    port = closed_port()
    alice = _bob_replaced(cluster, port)
    key = ed25519.Ed25519PrivateKey.generate()
    with ForgedListener(tmp_path, port, self_signed("bob", key), key) as forged:
        alice.cmd("/msg bob for bob only")
        err = alice.wait_event("error", timeout=20)
        assert "not issued by the directory CA" in err["text"]
        assert forged.received == b""
    assert alice.events("delivered") == []


def test_a_forged_sender_on_an_authenticated_link_is_refused_and_closed(cluster):
    enrolled(cluster, "bob", "mallory")
    bob = cluster.peer("bob", register=False)
    host, port = bob.events("ready")[0]["listen"].rsplit(":", 1)
    creds = Credentials.load(cluster.tmp / "peers" / "mallory", "mallory")
    with FramedClient(host, int(port), tls=creds.client_context()) as c:
        c.send("MESSAGE", "alice", "m1", payload="it is me, alice")
        assert c.recv() == Message("ERR", (), "sender does not match certificate")
        assert c.read_until_closed() == []
    # Her own name on the same kind of link is fine, and verified.
    with FramedClient(host, int(port), tls=creds.client_context()) as c:
        c.send("MESSAGE", "mallory", "m2", payload="hi, mallory here")
        assert c.recv() == Message("ACK", ("m2",))
    m = bob.wait_event("message", text="hi, mallory here")
    assert m["from"] == "mallory" and m["verified"] is True
    assert [e["text"] for e in bob.events("message")] == ["hi, mallory here"]


def test_a_plaintext_message_is_not_verified(cluster):
    bob = cluster.peer("bob")
    host, port = bob.events("ready")[0]["listen"].rsplit(":", 1)
    with FramedClient(host, int(port)) as c:
        c.send("MESSAGE", "carol", "m1", payload="over plaintext")
        assert c.recv() == Message("ACK", ("m1",))
    assert bob.wait_event("message", text="over plaintext")["verified"] is False


class ForgedListener:
    """A TLS listener presenting a certificate of its own (no client
    certificate asked), recording whatever application data reaches it."""

    def __init__(self, tmp_path, port: int, cert: x509.Certificate, key) -> None:
        cert_file, key_file = tmp_path / "forged.crt", tmp_path / "forged.key"
        cert_file.write_bytes(cert.public_bytes(_PEM))
        key_file.write_bytes(key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert_file), str(key_file))
        self.sock = socket.create_server(("127.0.0.1", port))
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    while data := tls.recv(4096):
                        self.received += data
            except (OSError, ValueError):
                continue

    def __enter__(self) -> ForgedListener:
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()


def self_signed(name: str, key) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"eurechat:user:{name}")]), critical=False)
            .sign(key, None))


def test_a_certificate_of_the_recipient_with_another_key_is_refused(cluster, tmp_path):
    """Issued by the directory CA and naming bob, but not the key the
    directory lists for him (an old key after a rotation, a stolen CA
    signature): refused, nothing written."""
    port = closed_port()
    alice = _bob_replaced(cluster, port)
    identity = load_directory_identity(cluster.dir_data)
    key = ed25519.Ed25519PrivateKey.generate()
    cert = issue_user_certificate("bob", key.public_key(), identity.ca_cert, identity.ca_key)
    with ForgedListener(tmp_path, port, cert, key) as forged:
        alice.cmd("/msg bob for bob only")
        err = alice.wait_event("error", timeout=20)
        assert f"presented key {fingerprint(key.public_key())}" in err["text"]
        assert forged.received == b""
    assert alice.events("delivered") == []


def test_the_listener_of_an_enrolled_peer_asks_every_tls_client_for_a_certificate(cluster):
    enrolled(cluster, "bob")
    bob = cluster.peer("bob", register=False)
    host, port = bob.events("ready")[0]["listen"].rsplit(":", 1)
    got = []
    try:
        with FramedClient(host, int(port), tls=trusting(ca_pem_of(cluster.dir_data))) as c:
            c.send("MESSAGE", "alice", "m1", payload="no certificate")
            got = c.read_until_closed()
    except (ssl.SSLError, ConnectionError):
        pass   # the alert for the missing certificate
    assert not any(m.type == "ACK" for m in got)
    bob.cmd("/pending")
    bob.wait_event("pending")
    assert bob.events("message") == []


def test_the_directorys_probe_may_only_ping(cluster):
    enrolled(cluster, "bob")
    bob = cluster.peer("bob", register=False)
    host, port = bob.events("ready")[0]["listen"].rsplit(":", 1)
    identity = load_directory_identity(cluster.dir_data)
    ctx = trusting(identity.ca_pem)
    ctx.load_cert_chain(identity.cert_file, identity.key_file)
    with FramedClient(host, int(port), tls=ctx) as c:
        assert c.request("PING", "t1") == Message("PONG", ("t1",))
        c.send("MESSAGE", "alice", "m1", payload="from the directory?")
        assert c.read_until_closed() == []
    bob.cmd("/pending")
    bob.wait_event("pending")
    assert bob.events("message") == []


def test_a_recording_relay_between_enrolled_peers_sees_no_plaintext(cluster):
    """Fixed addresses, no directory: alice has pinned bob's key, so her link
    through the tap is mutual TLS requiring it; the tap sees ciphertext."""
    secret = "the eagle lands at noon"
    fps = enrolled(cluster, "alice", "bob")
    data = cluster.tmp / "peers"
    Pins(data / "alice", "alice").check("bob", fps["bob"])

    async def main():
        got: list = []
        arrived = asyncio.Event()

        def on_message(m):
            got.append(m)
            arrived.set()

        bob = Peer("bob", data_dir=data / "bob", on_message=on_message, plaintext="off")
        await bob.start()
        try:
            with Relay(bob.address) as tap:
                alice = Peer("alice", data_dir=data / "alice", addresses={"bob": tap.address})
                await alice.start()
                try:
                    await alice.send("bob", secret)
                    await asyncio.wait_for(arrived.wait(), 20)
                    assert await alice.wait_idle(10)
                    up, down = tap.captured
                finally:
                    await alice.close()
        finally:
            await bob.close()
        assert got[0].text == secret and got[0].sender == "alice" and got[0].verified
        assert up.startswith(b"\x16\x03") and down
        for captured in (up, down):
            assert secret.encode() not in captured and b"MESSAGE" not in captured

    run(main())
