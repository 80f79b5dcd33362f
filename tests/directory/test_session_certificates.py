"""``CERT`` and login by certificate in the sans-IO session (SPEC §5.3): which
effect each request asks for, and what its outcome makes of the session."""

from __future__ import annotations

from eurechat.directory.session import (
    Authenticate,
    CertLogin,
    Enrol,
    PeerCertificate,
    Result,
    Session,
    SessionConfig,
    State,
)

FP = "sha256:" + "A" * 43
CSR = b"-----BEGIN CERTIFICATE REQUEST-----\n...\n-----END CERTIFICATE REQUEST-----\n"


def F(type_: bytes, body: bytes) -> bytes:
    return b"%s %d\n%s" % (type_, len(body), body)


def session(tls: bool = True, cert=None) -> Session:
    s = Session(SessionConfig(), lambda name: (), "127.0.0.1")
    s.tls = tls
    s.peer_cert = cert
    return s


def password_login(s: Session, name: str = "amy") -> None:
    assert s.feed(b"USER 0 %s\n" % name.encode()).data == F(
        b"ACK", b"hi %s, authentication required" % name.encode())
    assert s.feed(b"PASS 0 password1\n").effect == Authenticate(name, b"password1")
    assert s.resume(Result.OK).data == F(b"ACK", b"successfully authenticated")


class TestLoginByCertificate:
    def test_user_named_by_the_certificate_asks_for_a_certificate_login(self):
        s = session(cert=PeerCertificate("amy", FP))
        out = s.feed(b"USER 0 amy\n")
        assert out.data == b"" and out.effect == CertLogin("amy", FP)
        assert s.resume(Result.OK).data == F(b"ACK", b"hi amy, authenticated by certificate")
        assert s.state is State.READY and not s.by_password

    def test_a_key_that_is_not_enrolled_falls_back_to_the_password(self):
        s = session(cert=PeerCertificate("amy", FP))
        s.feed(b"USER 0 amy\n")
        assert s.resume(Result.FAILED).data == F(b"ACK", b"hi amy, authentication required")
        assert s.state is State.AUTH
        assert s.feed(b"PASS 0 password1\n").effect == Authenticate("amy", b"password1")

    def test_an_unavailable_account_store_falls_back_to_the_password(self):
        s = session(cert=PeerCertificate("amy", FP))
        s.feed(b"USER 0 amy\n")
        assert s.resume(Result.UNAVAILABLE).data == F(b"ACK", b"hi amy, authentication required")
        assert s.state is State.AUTH

    def test_a_certificate_naming_another_user_asks_for_the_password(self):
        s = session(cert=PeerCertificate("bob", FP))
        out = s.feed(b"USER 0 amy\n")
        assert out.effect is None
        assert out.data == F(b"ACK", b"hi amy, authentication required")

    def test_without_a_certificate_nothing_changes(self):
        s = session(cert=None)
        password_login(s)
        assert s.by_password


class TestCert:
    def test_cert_asks_to_enrol_with_what_the_session_knows(self):
        s = session(cert=PeerCertificate("amy", FP))
        s.feed(b"USER 0 amy\n")
        s.resume(Result.OK)
        out = s.feed(F(b"CERT", CSR))
        assert out.effect == Enrol("amy", CSR, False, FP, False)
        chain = b"-----BEGIN CERTIFICATE-----\n"
        assert s.resume(Result.OK, detail=chain).data == F(b"RESULT", chain)

    def test_reset_after_a_password_login(self):
        s = session()
        password_login(s)
        out = s.feed(b"CERT %d reset\n%s" % (len(CSR), CSR))
        assert out.effect == Enrol("amy", CSR, True, None, True)
        why = b"key mismatch: amy is enrolled with " + FP.encode()
        assert s.resume(Result.INVALID, detail=why).data == F(b"ERR", why)
        assert s.state is State.READY  # a refused CERT keeps the session

    def test_a_certificate_of_another_user_is_not_the_sessions_key(self):
        s = session(cert=PeerCertificate("bob", FP))
        password_login(s)
        assert s.feed(F(b"CERT", CSR)).effect == Enrol("amy", CSR, False, None, True)

    def test_cert_over_plaintext_is_refused(self):
        s = session(tls=False)
        password_login(s)
        out = s.feed(F(b"CERT", CSR))
        assert out.effect is None and out.data == F(b"ERR", b"CERT requires a TLS session")
        assert not out.close

    def test_cert_before_login_is_not_understood(self):
        s = session()
        out = s.feed(F(b"CERT", CSR))
        assert out.close and b"USER" in out.data

    def test_cert_with_another_argument_is_not_understood(self):
        s = session()
        password_login(s)
        out = s.feed(b"CERT %d renew\n%s" % (len(CSR), CSR))
        assert out.close and out.data == F(b"ERR", b"I did not understand the message CERT")
