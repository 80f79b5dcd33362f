"""The peer's trust in a directory (SPEC §5.2): the decisions, the pin store,
and the client context against a real TLS server on loopback."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import stat
import threading

import pytest

from eurechat.tls.fingerprint import fingerprint_of_cert
from eurechat.tls.trust import (
    DIRECTORY_URI,
    DirectoryTrust,
    KnownDirectories,
    TrustError,
    TrustMismatch,
    client_context,
    describe_identity,
    directory_cert_problem,
    read_ca_file,
)
from support.certs import issue, make_ca

WHERE = "127.0.0.1:8888"


@pytest.fixture(scope="module")
def ca():
    return make_ca("directory CA")


@pytest.fixture(scope="module")
def server(ca):
    return issue(ca, [DIRECTORY_URI])


@pytest.fixture(scope="module")
def other_ca():
    return make_ca("someone else")


class TestDirectoryCertificate:
    def test_the_directory_certificate_of_its_ca_passes(self, ca, server):
        assert directory_cert_problem(server.cert, ca.cert) is None

    def test_a_user_certificate_of_the_same_ca_is_not_the_directory(self, ca):
        user = issue(ca, ["eurechat:user:bob"])
        assert "not a directory certificate" in directory_cert_problem(user.cert, ca.cert)

    def test_no_san_at_all_is_not_the_directory(self, ca):
        bare = issue(ca, [])
        assert "not a directory certificate" in directory_cert_problem(bare.cert, ca.cert)

    def test_another_ca_did_not_issue_it(self, server, other_ca):
        assert "not issued" in directory_cert_problem(server.cert, other_ca.cert)

    def test_same_name_other_key_did_not_issue_it(self, ca, server):
        # A stranger's CA with the very same subject: the signature decides.
        twin = make_ca("directory CA")
        assert twin.cert.subject == ca.cert.subject
        assert "not issued" in directory_cert_problem(server.cert, twin.cert)

    def test_expired_and_not_yet_valid(self, ca):
        now = datetime.datetime.now(datetime.timezone.utc)
        old = issue(ca, not_before=now - datetime.timedelta(days=9),
                    not_after=now - datetime.timedelta(days=1))
        new = issue(ca, not_before=now + datetime.timedelta(days=1),
                    not_after=now + datetime.timedelta(days=9))
        assert "not valid now" in directory_cert_problem(old.cert, ca.cert)
        assert "not valid now" in directory_cert_problem(new.cert, ca.cert)


class TestFirstUse:
    def test_pins_shows_and_then_expects_it(self, tmp_path, ca, server):
        trust = DirectoryTrust(known=KnownDirectories(tmp_path))
        first = trust.expect(WHERE)
        assert first.source == "first-use" and first.fingerprint is None
        fp, pinned = trust.accept_ca(WHERE, first, server.der, ca.cert_pem)
        assert pinned and fp == fingerprint_of_cert(ca.cert)
        again = DirectoryTrust(known=KnownDirectories(tmp_path)).expect(WHERE)
        assert again.source == "known" and again.fingerprint == fp
        assert again.ca_pem == ca.cert_pem
        # other HOST:PORTs are not affected
        assert trust.expect("127.0.0.1:9999").source == "first-use"

    def test_a_server_not_issued_by_the_ca_it_sends_is_not_pinned(self, tmp_path, ca,
                                                                    other_ca):
        known = KnownDirectories(tmp_path)
        trust = DirectoryTrust(known=known)
        stranger = issue(other_ca)
        with pytest.raises(TrustMismatch) as exc:
            trust.accept_ca(WHERE, trust.expect(WHERE), stranger.der, ca.cert_pem)
        assert exc.value.got == fingerprint_of_cert(stranger.cert)
        assert "no credentials were sent" in str(exc.value)
        assert known.get(WHERE) is None

    def test_a_user_certificate_is_not_pinned(self, tmp_path, ca):
        known = KnownDirectories(tmp_path)
        trust = DirectoryTrust(known=known)
        with pytest.raises(TrustMismatch, match="not a directory certificate"):
            trust.accept_ca(WHERE, trust.expect(WHERE), issue(ca, ["eurechat:user:x"]).der,
                            ca.cert_pem)
        assert known.get(WHERE) is None

    def test_garbage_for_a_ca_is_refused(self, tmp_path, server):
        trust = DirectoryTrust(known=KnownDirectories(tmp_path))
        with pytest.raises(TrustError, match="not a certificate"):
            trust.accept_ca(WHERE, trust.expect(WHERE), server.der, b"hello")

    def test_a_pinned_directory_with_a_new_ca_names_both(self, tmp_path, ca, server, other_ca):
        trust = DirectoryTrust(known=KnownDirectories(tmp_path))
        trust.accept_ca(WHERE, trust.expect(WHERE), server.der, ca.cert_pem)
        replaced = issue(other_ca)
        with pytest.raises(TrustMismatch) as exc:
            trust.accept_ca(WHERE, trust.expect(WHERE), replaced.der, other_ca.cert_pem)
        old, new = fingerprint_of_cert(ca.cert), fingerprint_of_cert(other_ca.cert)
        assert (exc.value.expected, exc.value.got) == (old, new)
        assert old in str(exc.value) and new in str(exc.value) and "\n" not in str(exc.value)
        # the pin is unchanged
        assert KnownDirectories(tmp_path).get(WHERE).fingerprint == old


class TestFingerprintOption:
    def test_the_right_ca_passes_and_is_not_stored(self, tmp_path, ca, server):
        known = KnownDirectories(tmp_path)
        trust = DirectoryTrust(fingerprint=fingerprint_of_cert(ca.cert), known=known)
        exp = trust.expect(WHERE)
        assert exp.source == "fingerprint"
        assert trust.accept_ca(WHERE, exp, server.der, ca.cert_pem) == (
            fingerprint_of_cert(ca.cert), False)
        assert known.get(WHERE) is None

    def test_a_wrong_ca_is_refused(self, ca, server, other_ca):
        trust = DirectoryTrust(fingerprint=fingerprint_of_cert(other_ca.cert))
        with pytest.raises(TrustMismatch) as exc:
            trust.accept_ca(WHERE, trust.expect(WHERE), server.der, ca.cert_pem)
        assert exc.value.expected == fingerprint_of_cert(other_ca.cert)
        assert exc.value.got == fingerprint_of_cert(ca.cert)

    def test_the_right_ca_with_someone_elses_server_certificate_is_refused(self, ca, other_ca):
        # A relay that forwards CACERT from the real directory but presents its own certificate.
        trust = DirectoryTrust(fingerprint=fingerprint_of_cert(ca.cert))
        mitm = issue(other_ca)
        with pytest.raises(TrustMismatch) as exc:
            trust.accept_ca(WHERE, trust.expect(WHERE), mitm.der, ca.cert_pem)
        assert exc.value.got == fingerprint_of_cert(mitm.cert)

    def test_the_fingerprint_option_wins_over_a_pin(self, tmp_path, ca, server, other_ca):
        known = KnownDirectories(tmp_path)
        known.add(WHERE, ca.cert_pem)
        trust = DirectoryTrust(fingerprint=fingerprint_of_cert(other_ca.cert), known=known)
        assert trust.expect(WHERE).fingerprint == fingerprint_of_cert(other_ca.cert)

    def test_a_malformed_fingerprint_is_a_clear_error(self):
        with pytest.raises(TrustError, match="not a fingerprint"):
            DirectoryTrust(fingerprint="sha256:abc")


class TestCaFileOption:
    def test_read_and_expect(self, tmp_path, ca, other_ca):
        path = tmp_path / "ca.pem"
        path.write_bytes(ca.cert_pem)
        known = KnownDirectories(tmp_path)
        known.add(WHERE, other_ca.cert_pem)
        trust = DirectoryTrust(ca_pem=read_ca_file(path),
                               fingerprint=fingerprint_of_cert(other_ca.cert), known=known)
        exp = trust.expect(WHERE)
        assert exp.source == "ca-file" and exp.ca_pem == ca.cert_pem
        assert exp.fingerprint == fingerprint_of_cert(ca.cert)

    def test_unreadable_and_not_a_certificate(self, tmp_path):
        with pytest.raises(TrustError, match="cannot read"):
            read_ca_file(tmp_path / "missing.pem")
        (tmp_path / "junk.pem").write_text("-----BEGIN NOTHING-----\n")
        with pytest.raises(TrustError, match="not a certificate"):
            read_ca_file(tmp_path / "junk.pem")

    def test_verified_user_certificate_is_refused(self, ca):
        trust = DirectoryTrust(ca_pem=ca.cert_pem)
        exp = trust.expect(WHERE)
        trust.check_verified(WHERE, exp, issue(ca).der)
        with pytest.raises(TrustMismatch, match="not a directory certificate"):
            trust.check_verified(WHERE, exp, issue(ca, ["eurechat:user:bob"]).der)


class TestKnownDirectoriesFile:
    def test_modes_and_format(self, tmp_path, ca):
        known = KnownDirectories(tmp_path / "data")
        fp = known.add(WHERE, ca.cert_pem)
        assert stat.S_IMODE(os.stat(known.path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(known.pems).st_mode) == 0o700
        pem = known.pems / (fp[len("sha256:"):] + ".pem")
        assert stat.S_IMODE(os.stat(pem).st_mode) == 0o600
        lines = [x for x in known.path.read_text().splitlines() if not x.startswith("#")]
        assert lines == [f"{WHERE} {fp}"]
        assert not [p for p in known.dir.iterdir() if ".tmp" in p.name]

    def test_a_lost_pem_keeps_the_pin_and_comes_back(self, tmp_path, ca, server, other_ca):
        known = KnownDirectories(tmp_path)
        fp = known.add(WHERE, ca.cert_pem)
        for pem in known.pems.iterdir():
            pem.unlink()
        trust = DirectoryTrust(known=known)
        exp = trust.expect(WHERE)
        assert exp == (fp, None, "known")
        with pytest.raises(TrustMismatch):   # not trusted anew
            trust.accept_ca(WHERE, exp, issue(other_ca).der, other_ca.cert_pem)
        assert trust.accept_ca(WHERE, exp, server.der, ca.cert_pem) == (fp, False)
        assert known.get(WHERE).ca_pem == ca.cert_pem

    def test_a_pem_swapped_for_another_ca_is_not_used(self, tmp_path, ca, other_ca):
        known = KnownDirectories(tmp_path)
        fp = known.add(WHERE, ca.cert_pem)
        (known.pems / (fp[len("sha256:"):] + ".pem")).write_bytes(other_ca.cert_pem)
        assert known.get(WHERE) == (fp, None, "known")

    def test_damaged_lines_are_skipped(self, tmp_path, ca):
        known = KnownDirectories(tmp_path)
        fp = known.add(WHERE, ca.cert_pem)
        with open(known.path, "a") as f:
            f.write("garbage\nhost:1 sha256:short\n")
        assert known.get(WHERE).fingerprint == fp
        assert known.get("host:1") is None

    def test_concurrent_pins_are_all_kept(self, tmp_path, ca):
        known = KnownDirectories(tmp_path)
        threads = [threading.Thread(target=known.add, args=(f"h:{i}", ca.cert_pem))
                   for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(known.get(f"h:{i}") is not None for i in range(20))


def _tls_server(leaf, ca):
    """One TLS 1.3 server on loopback presenting ``leaf`` (+ chain ``ca``)."""
    import tempfile
    d = tempfile.mkdtemp()
    cert, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
    with open(cert, "wb") as f:
        f.write(leaf.cert_pem + ca.cert_pem)
    with open(key, "wb") as f:
        f.write(leaf.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    lsock = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = lsock.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass
        lsock.close()

    threading.Thread(target=serve, daemon=True).start()
    return lsock.getsockname()[1]


def _handshake(port, ca_pem):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client_context(ca_pem).wrap_socket(raw) as tls:
            assert tls.version() == "TLSv1.3"
            return tls.getpeercert(binary_form=True)


class TestClientContext:
    def test_a_pinned_ca_verifies_its_directory(self, ca, server):
        assert _handshake(_tls_server(server, ca), ca.cert_pem) == server.der

    def test_a_pinned_ca_refuses_another_chain_in_the_handshake(self, ca, other_ca):
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(_tls_server(issue(other_ca), other_ca), ca.cert_pem)

    def test_first_contact_sees_the_certificate_without_verifying(self, other_ca):
        leaf = issue(other_ca)
        der = _handshake(_tls_server(leaf, other_ca), None)
        assert der == leaf.der
        assert describe_identity(der, other_ca.cert_pem)[0] == fingerprint_of_cert(other_ca.cert)
