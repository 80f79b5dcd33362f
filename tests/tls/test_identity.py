"""The directory's identity on disk (SPEC §5.2): created once, safe modes,
renewed when due, an operator's CA instead of ours."""

from __future__ import annotations

import datetime
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from eurechat.tls import identity as ident
from eurechat.tls.fingerprint import fingerprint
from eurechat.tls.identity import (
    DIRECTORY_URI,
    IdentityError,
    create_ca,
    issue_certificate,
    load_directory_identity,
    stored_fingerprint,
)


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _uris(cert: x509.Certificate) -> list:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def _server_cert(identity) -> x509.Certificate:
    with open(identity.cert_file, "rb") as f:
        return x509.load_pem_x509_certificates(f.read())[0]


@pytest.fixture
def loose_umask():
    """Files must get their modes whatever the umask (0: everything readable)."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_first_use_creates_a_ca_and_a_server_certificate_with_safe_modes(tmp_path, loose_umask):
    ident_ = load_directory_identity(str(tmp_path), "127.0.0.1")
    tls = tmp_path / "tls"
    assert _mode(str(tls)) == 0o700
    assert _mode(str(tls / "ca.key")) == 0o600
    assert _mode(str(tls / "server.key")) == 0o600
    assert ident_.fingerprint == fingerprint(ident_.ca_cert.public_key())
    assert stored_fingerprint(str(tmp_path)) == ident_.fingerprint
    ca = ident_.ca_cert
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert isinstance(ca.public_key(), ed25519.Ed25519PublicKey)
    server = _server_cert(ident_)
    server.verify_directly_issued_by(ca)
    assert _uris(server) == [DIRECTORY_URI]
    # The chain file carries the CA behind the server certificate.
    with open(ident_.cert_file, "rb") as f:
        chain = x509.load_pem_x509_certificates(f.read())
    assert [c.subject for c in chain] == [server.subject, ca.subject]
    assert ident_.ca_pem == ca.public_bytes(serialization.Encoding.PEM)
    assert not any(name.endswith(".tmp") or ".tmp." in name for name in os.listdir(tls))


def test_a_wide_open_tls_directory_and_key_are_closed_again(tmp_path):
    first = load_directory_identity(str(tmp_path))
    os.chmod(tmp_path / "tls", 0o755)
    os.chmod(tmp_path / "tls" / "ca.key", 0o644)
    again = load_directory_identity(str(tmp_path))
    assert again.fingerprint == first.fingerprint
    assert _mode(str(tmp_path / "tls")) == 0o700
    assert _mode(str(tmp_path / "tls" / "ca.key")) == 0o600


def test_the_identity_is_kept_across_starts(tmp_path):
    first = load_directory_identity(str(tmp_path), "127.0.0.1")
    cert_before = _server_cert(first)
    second = load_directory_identity(str(tmp_path), "127.0.0.1")
    assert second.fingerprint == first.fingerprint
    assert _server_cert(second).serial_number == cert_before.serial_number


def test_the_server_certificate_names_the_listening_address(tmp_path):
    first = load_directory_identity(str(tmp_path), "127.0.0.1")
    other = load_directory_identity(str(tmp_path), "192.0.2.7")  # a new --host: reissued
    assert other.fingerprint == first.fingerprint
    cert = _server_cert(other)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "192.0.2.7" in {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    assert "localhost" in san.get_values_for_type(x509.DNSName)


def test_a_server_certificate_near_expiry_is_issued_again(tmp_path, monkeypatch):
    first = load_directory_identity(str(tmp_path))
    old_serial = _server_cert(first).serial_number
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=340)
    monkeypatch.setattr(ident, "_now", lambda: later)
    renewed = load_directory_identity(str(tmp_path))
    assert renewed.fingerprint == first.fingerprint  # the CA, and so the pin, stay
    assert _server_cert(renewed).serial_number != old_serial


def test_an_operator_ca_issues_the_server_certificate(tmp_path):
    key, cert = create_ca("operator CA")
    cert_file, key_file = tmp_path / "op.crt", tmp_path / "op.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    data = tmp_path / "data"
    ident_ = load_directory_identity(str(data), ca_cert_file=str(cert_file),
                                     ca_key_file=str(key_file))
    assert ident_.fingerprint == fingerprint(key.public_key())
    assert not (data / "tls" / "ca.key").exists()
    _server_cert(ident_).verify_directly_issued_by(cert)
    # Later started without the operator's CA: refused, not a new identity.
    with pytest.raises(IdentityError, match="operator's CA"):
        load_directory_identity(str(data))
    # A data directory that had its own CA gets its server certificate reissued.
    own = load_directory_identity(str(tmp_path / "own"))
    switched = load_directory_identity(str(tmp_path / "own"), ca_cert_file=str(cert_file),
                                       ca_key_file=str(key_file))
    assert switched.fingerprint != own.fingerprint
    _server_cert(switched).verify_directly_issued_by(cert)


def test_operator_files_that_do_not_fit_are_one_clear_error(tmp_path):
    key, cert = create_ca("operator CA")
    other, _ = create_ca("other")
    cert_file, key_file = tmp_path / "op.crt", tmp_path / "op.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(other.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    with pytest.raises(IdentityError, match="is not the key of"):
        load_directory_identity(str(tmp_path / "d"), ca_cert_file=str(cert_file),
                                ca_key_file=str(key_file))
    with pytest.raises(IdentityError, match="cannot read"):
        load_directory_identity(str(tmp_path / "d"), ca_cert_file=str(tmp_path / "none"),
                                ca_key_file=str(key_file))
    with pytest.raises(IdentityError, match="go together"):
        load_directory_identity(str(tmp_path / "d"), ca_cert_file=str(cert_file))
    # A leaf certificate is not a CA.
    leaf = issue_certificate(key, cert, other.public_key(), common_name="leaf")
    leaf_file = tmp_path / "leaf.crt"
    leaf_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    other_file = tmp_path / "other.key"
    other_file.write_bytes(other.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    with pytest.raises(IdentityError, match="not a CA certificate"):
        load_directory_identity(str(tmp_path / "d"), ca_cert_file=str(leaf_file),
                                ca_key_file=str(other_file))


def test_issue_certificate_is_generic(tmp_path):
    """Users' certificates reuse it: any key type, role URIs, client usage."""
    ca_key, ca_cert = create_ca()
    user_key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_certificate(ca_key, ca_cert, user_key.public_key(), common_name="alice",
                             uris=["eurechat:user:alice"], days=7, server=True, client=True)
    cert.verify_directly_issued_by(ca_cert)
    assert _uris(cert) == ["eurechat:user:alice"]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = ident._not_after(cert) - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(days=6) < lifetime <= datetime.timedelta(days=7)


def test_a_running_server_serves_a_renewed_certificate_to_new_connections(tmp_path):
    """``DirectoryServer.set_tls`` (what the periodic renewal calls): new
    sessions get the new context, and CACERT follows."""
    import asyncio
    import ssl

    from eurechat.directory.accounts.sqlite import SqliteAccounts
    from eurechat.directory.presence.memory import MemoryRegistry
    from eurechat.directory.server import DirectoryServer, ServerConfig, Services
    from eurechat.directory.session import SessionConfig
    from eurechat.directory.throttle.memory import MemoryThrottle
    from eurechat.tls.contexts import server_context

    first = load_directory_identity(str(tmp_path / "one"))
    second = load_directory_identity(str(tmp_path / "two"))

    def client_ctx(pem: bytes) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=pem.decode())
        return ctx

    async def main():
        services = Services(MemoryRegistry(), SqliteAccounts(str(tmp_path / "a.sqlite3")),
                            MemoryThrottle())
        await services.accounts.start()
        server = DirectoryServer(ServerConfig(session=SessionConfig(ca_pem=first.ca_pem),
                                              ssl_context=server_context(first)), services)
        host, port = await server.start("127.0.0.1", 0)
        try:
            r, w = await asyncio.open_connection(host, port, ssl=client_ctx(first.ca_pem))
            server.set_tls(second, server_context(second))
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.open_connection(host, port, ssl=client_ctx(first.ca_pem))
            r2, w2 = await asyncio.open_connection(host, port, ssl=client_ctx(second.ca_pem))
            w2.write(b"CACERT 0\n")
            head = await r2.readline()
            assert await r2.readexactly(int(head.split()[1])) == second.ca_pem
            w.write(b"PING 0 still\n")  # the session opened before goes on
            assert await r.readline() == b"PONG 0 still\n"
            w.close()
            w2.close()
        finally:
            await server.close()
            await services.accounts.close()

    asyncio.run(main())
