"""The peer trusts the directory it pinned, and nobody else (SPEC §5.2).

Real ``eurechat-directory`` and ``python -m eurechat.peer`` processes, real
TLS.  The attackers are relays in the middle (``support.relay``): a tap that
records the encrypted bytes, and men in the middle that present another
certificate and record what the peer would tell them.  The password must
never reach them; the peer exits 7 at start, or reports an ``error`` and
retries without credentials while running.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from eurechat.tls.fingerprint import fingerprint_of_cert
from eurechat.tls.trust import load_certificate
from support.certs import issue, make_ca, server_context
from support.peers import FAST, PASSWORD, PeerProc, peer_cmd
from support.processes import directory_cmd, start_directory, start_process, test_env
from support.relay import Relay, insecure_client_context

FIRST_USE = "is trusted on first use"
MISMATCH = "is not the one this peer trusts"
SECRET = PASSWORD.encode()


def directory_fingerprint(data_dir: str) -> str:
    """What ``eurechat-directory fingerprint`` prints (one line)."""
    res = subprocess.run(directory_cmd() + ["fingerprint", "--data-dir", data_dir],
                         capture_output=True, text=True, env=test_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    fp = res.stdout.strip()
    assert re.fullmatch(r"sha256:[A-Za-z0-9_-]{43}", fp), res.stdout
    return fp


def ca_file(data_dir: str) -> Path:
    return Path(data_dir) / "tls" / "ca.crt"


class Peers:
    """Peer processes of one test, each with its data directory under tmp."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs = []

    def argv(self, name: str, directory: str, *extra: str):
        return peer_cmd() + ["--user", name, "--directory", directory,
                             "--data-dir", str(self.tmp / name), "--json", *extra]

    def start(self, name: str, directory: str, *extra: str,
              password: str = PASSWORD) -> PeerProc:
        proc = start_process(self.argv(name, directory, *extra), ready=r'"event": "ready"',
                             env=test_env(EURECHAT_PASSWORD=password, **FAST),
                             stdin=subprocess.PIPE, timeout=30)
        self.procs.append(proc)
        return PeerProc(proc)

    def run(self, name: str, directory: str, *extra: str, stdin: str = "/quit\n"):
        """Run a peer to its end; (exit code, stdout, stderr)."""
        res = subprocess.run(self.argv(name, directory, *extra), input=stdin,
                             capture_output=True, text=True, timeout=60,
                             env=test_env(EURECHAT_PASSWORD=PASSWORD, **FAST))
        return res.returncode, res.stdout, res.stderr

    def known(self, name: str) -> str:
        return (self.tmp / name / "known_directories").read_text()

    def close(self) -> None:
        for p in self.procs:
            p.stop(timeout=5)


@pytest.fixture
def peers(tmp_path):
    p = Peers(tmp_path / "peers")
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def directory(tmp_path):
    d = start_directory(data_dir=str(tmp_path / "directory"), env=test_env())
    try:
        yield d
    finally:
        d.stop()


def mitm(upstream, port: int = 0, leaf=None, ca=None) -> Relay:
    """A man in the middle: its own CA and a perfect directory certificate of
    that CA (unless ``leaf``/``ca`` say otherwise), relaying to ``upstream``."""
    if leaf is None:
        ca = make_ca("eurechat directory CA")
        leaf = issue(ca, ["eurechat:directory"])
    return Relay(upstream, port=port, server_ssl=server_context(leaf, ca),
                 upstream_ssl=insecure_client_context())


def assert_refused(code: int, err: str, expected: str, got: str) -> None:
    assert code == 7, (code, err)
    lines = [x for x in err.splitlines() if MISMATCH in x]
    assert len(lines) == 1, err
    assert expected in lines[0] and got in lines[0] and "no credentials were sent" in lines[0]


# -- trust on first use ------------------------------------------------------

def test_first_use_pins_the_ca_and_shows_its_fingerprint_once(directory, peers):
    fp = directory_fingerprint(directory.data_dir)
    code, _, err = peers.run("alice", directory.hostport, "--register")
    assert code == 0, err
    shown = [x for x in err.splitlines() if FIRST_USE in x]
    assert len(shown) == 1 and fp in shown[0], err
    assert f"{directory.hostport} {fp}" in peers.known("alice")
    code, _, err = peers.run("alice", directory.hostport)
    assert code == 0, err
    assert FIRST_USE not in err


def test_a_pinned_directory_whose_data_directory_was_replaced_is_refused(tmp_path, peers):
    old_dir, new_dir = str(tmp_path / "old"), str(tmp_path / "new")
    d = start_directory(data_dir=old_dir)
    port = d.port
    old = directory_fingerprint(old_dir)
    try:
        assert peers.run("alice", d.hostport, "--register")[0] == 0
    finally:
        d.stop()
    d = start_directory(data_dir=new_dir, port=port)
    try:
        new = directory_fingerprint(new_dir)
        assert new != old
        code, _, err = peers.run("alice", d.hostport, "--register")
        assert_refused(code, err, old, new)
        assert f"{d.hostport} {old}" in peers.known("alice")    # the pin stays
    finally:
        d.stop()


# -- the options -------------------------------------------------------------

def test_directory_ca_accepts_its_directory_and_refuses_another(directory, peers, tmp_path):
    code, _, err = peers.run("alice", directory.hostport, "--register",
                             "--directory-ca", str(ca_file(directory.data_dir)))
    assert code == 0, err
    assert FIRST_USE not in err
    assert not (tmp_path / "peers" / "alice" / "known_directories").exists()

    stranger = make_ca("eurechat directory CA")
    other = tmp_path / "other-ca.pem"
    other.write_bytes(stranger.cert_pem)
    code, _, err = peers.run("alice", directory.hostport, "--directory-ca", str(other))
    assert_refused(code, err, fingerprint_of_cert(stranger.cert),
                   directory_fingerprint(directory.data_dir))


def test_directory_fingerprint_accepts_the_right_one_and_refuses_another(directory, peers):
    fp = directory_fingerprint(directory.data_dir)
    code, _, err = peers.run("alice", directory.hostport, "--register",
                             "--directory-fingerprint", fp)
    assert code == 0, err
    wrong = fingerprint_of_cert(make_ca().cert)
    code, _, err = peers.run("alice", directory.hostport, "--directory-fingerprint", wrong)
    assert_refused(code, err, wrong, fp)


def test_bad_trust_options_are_usage_errors(peers, tmp_path):
    code, _, err = peers.run("alice", "127.0.0.1:1", "--directory-fingerprint", "sha256:xyz")
    assert code == 2 and "invalid --directory-fingerprint" in err
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    code, _, err = peers.run("alice", "127.0.0.1:1", "--directory-ca", str(junk))
    assert code == 2 and "not a certificate" in err and "Traceback" not in err


# -- men in the middle -------------------------------------------------------

@pytest.mark.parametrize("trust", ["pinned", "directory-ca", "directory-fingerprint",
                                   "first-use"])
def test_a_man_in_the_middle_gets_no_password(directory, peers, trust):
    """The relay presents a perfect directory certificate of its own CA and
    forwards everything (CACERT included) to the real directory."""
    real = directory_fingerprint(directory.data_dir)
    extra = []
    with mitm(directory.address) as relay:
        if trust == "pinned":
            # alice pinned the real directory at the address the relay now holds:
            # pin it there through a first session, then swap the pin's address.
            assert peers.run("alice", directory.hostport, "--register")[0] == 0
            known = peers.tmp / "alice" / "known_directories"
            known.write_text(known.read_text().replace(directory.hostport, relay.hostport))
        elif trust == "directory-ca":
            extra = ["--directory-ca", str(ca_file(directory.data_dir))]
        elif trust == "directory-fingerprint":
            extra = ["--directory-fingerprint", real]
        code, _, err = peers.run("alice", relay.hostport, "--register", *extra)
        assert code == 7, err
        line = [x for x in err.splitlines() if "no credentials were sent" in x]
        assert len(line) == 1, err
        if trust != "first-use":
            assert real in line[0], err
        sent = relay.client_bytes()
    assert SECRET not in sent and b"PASS" not in sent and b"REGISTER" not in sent, sent
    if trust == "first-use":
        assert not (peers.tmp / "alice" / "known_directories").exists() or \
            relay.hostport not in peers.known("alice")


def test_a_user_certificate_of_the_directory_ca_does_not_pass_as_the_directory(
        directory, peers, tmp_path):
    """Chaining to the directory CA is not enough: users' certificates come
    from it too.  A relay holding one (issued by the real CA) gets nothing."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from support.certs import Issued

    tls = Path(directory.data_dir) / "tls"
    ca = Issued(load_pem_private_key((tls / "ca.key").read_bytes(), None),
                load_certificate((tls / "ca.crt").read_bytes()))
    user = issue(ca, ["eurechat:user:mallory"])
    with mitm(directory.address, leaf=user, ca=ca) as relay:
        code, _, err = peers.run("alice", relay.hostport, "--register",
                                 "--directory-ca", str(ca_file(directory.data_dir)))
        assert code == 7, err
        assert "not a directory certificate" in err
        sent = relay.client_bytes()
    assert SECRET not in sent and b"PASS" not in sent


# -- a tap on the wire -------------------------------------------------------

def test_a_recording_relay_sees_neither_the_password_nor_query_results(directory, peers):
    # A password that goes as an argument (PASS 0 <password>): the form a
    # seed directory would also read, so TLS is all that hides it here.
    password = "one-word-secret"
    directory.useradd("alice", password)
    directory.useradd("bob", password)
    bob = peers.start("bob", directory.hostport, password=password)
    bob_listen = bob.events("ready")[0]["listen"]
    with Relay(directory.address) as tap:
        alice = peers.start("alice", tap.hostport, password=password)
        who = alice.who_until(lambda e: {u["name"] for u in e["users"]} >= {"alice", "bob"})
        assert any(f'{u["address"]}:{u["port"]}' == bob_listen for u in who["users"])
        assert alice.quit() == 0
        up, down = tap.client_bytes(), tap.server_bytes()
    assert up.startswith(b"\x16\x03") and len(down) > 0       # TLS, and it did talk
    host, port = bob_listen.rsplit(":", 1)
    for secret in (password.encode(), b"PASS", b"QUERY", b"alice"):
        assert secret not in up, secret
    for secret in (f"bob,{host},{port}".encode(), b"RESULT"):
        assert secret not in down, secret


# -- while running -----------------------------------------------------------

def test_when_the_directory_identity_changes_while_running_no_credentials_are_sent(
        tmp_path, peers):
    data = str(tmp_path / "directory")
    d = start_directory(data_dir=data)
    port = d.port
    real = directory_fingerprint(data)
    alice = peers.start("alice", d.hostport, "--register")
    d.stop()
    # The address is taken over by a man in the middle (another CA), which
    # relays to the real directory, restarted elsewhere.
    d = start_directory(data_dir=data)
    try:
        with mitm(d.address, port=port) as relay:
            err = alice.wait_event("error", timeout=30)
            while MISMATCH not in err["text"]:
                err = alice.wait_event("error", start=len(alice.events()), timeout=30)
            assert real in err["text"] and "no credentials were sent" in err["text"]
            # It keeps trying (each try: a handshake that fails the pin, and a
            # credential-free look at what is there), and says it once.
            relay.wait(lambda r: r.connections >= 3, "three more tries")
            sent = relay.client_bytes()
            mismatches = [e for e in alice.events("error") if MISMATCH in e["text"]]
        assert SECRET not in sent and b"PASS" not in sent, sent
        assert len(mismatches) == 1, mismatches
    finally:
        d.stop()
    # The real directory is back at the pinned address: the session resumes.
    d = start_directory(data_dir=data, port=port)
    try:
        alice.who_until(lambda e: any(u["name"] == "alice" for u in e["users"]))
    finally:
        d.stop()
