"""Several directory hosts, one operator CA (SPEC §5.2): two instances sharing
Redis and PostgreSQL and one CA serve one user base, and a client that pinned
one of them accepts the other."""

from __future__ import annotations

import re
import subprocess

from cryptography.hazmat.primitives import serialization

from eurechat.framing import Message
from eurechat.tls.fingerprint import fingerprint
from eurechat.tls.identity import create_ca
from support.client import FramedClient, Responder
from support.processes import directory_cmd, start_directory, test_env
from support.tls import server_uris, trusting
from support.waits import PW, request_until


def test_two_hosts_with_one_operator_ca_are_one_directory(redis_url, pg_dsn, tmp_path):
    key, cert = create_ca("example.org eurechat CA")
    ca_pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_file, key_file = tmp_path / "ca.crt", tmp_path / "ca.key"
    cert_file.write_bytes(ca_pem)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    want = fingerprint(key.public_key())
    hosts = []
    try:
        for name in ("a", "b"):  # each host its own data directory, one CA
            hosts.append(start_directory(
                "--registry", redis_url, "--accounts", pg_dsn, "--check-interval", "3600",
                "--tls-ca-cert", str(cert_file), "--tls-ca-key", str(key_file),
                data_dir=str(tmp_path / name)))
        a, b = hosts
        for d in hosts:
            d.wait_for_log(re.escape(f"directory fingerprint {want}"))
            assert not (tmp_path / d.data_dir / "tls" / "ca.key").exists()
        out = subprocess.run(directory_cmd() + ["fingerprint", "--data-dir", a.data_dir],
                             capture_output=True, text=True, env=test_env(), timeout=60)
        assert out.stdout == want + "\n"
        # A client that pinned the operator's CA (what a peer pinned through
        # host a) accepts host b: each presents a certificate of that CA.
        pinned = trusting(ca_pem)
        with Responder() as peer, FramedClient(*a.address, tls=pinned) as ca_, \
                FramedClient(*b.address, tls=pinned) as cb:
            assert server_uris(ca_.sock) == server_uris(cb.sock) == ["eurechat:directory"]
            assert ca_.request("CACERT") == cb.request("CACERT") == Message("RESULT", (), ca_pem)
            assert ca_.request("REGISTER", "alice", PW) == Message(
                "ACK", (), "account alice created")
            cb.login("alice", PW)  # the account is in the shared PostgreSQL
            ca_.login("alice", PW)
            assert ca_.request("BIND", "127.0.0.1", str(peer.port)).type == "ACK"
            line = f"alice,127.0.0.1,{peer.port}".encode()
            request_until(cb, ("QUERY", "alice"), lambda m: m.payload == line)
    finally:
        for d in hosts:
            d.stop()
