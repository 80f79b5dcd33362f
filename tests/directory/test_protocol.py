"""Every row of SPEC §2's state table, accounts and BIND verification, end to end
through the real CLI on loopback (one single-worker directory per module)."""

from __future__ import annotations

import select
import socket

import pytest

from eurechat.framing import Message
from support.client import ConnectionClosed, FramedClient, Responder, closed_port
from support.processes import run_directory, useradd


def ack(text):
    return Message("ACK", (), text)


def err(text):
    return Message("ERR", (), text)


def closes_with(client: FramedClient, reply: Message) -> None:
    assert client.read_until_closed() == [reply]


# -- new ---------------------------------------------------------------------

@pytest.mark.parametrize("verb", ["USER", "LOGIN"])
def test_user_and_login(directory, passwords, verb):
    with FramedClient(*directory.address) as c:
        assert c.request(verb, "bob") == ack("hi bob, authentication required")
        assert c.request("PASS", passwords["bob"]) == ack("successfully authenticated")


def test_new_anything_else(directory):
    with FramedClient(*directory.address) as c:
        c.send("QUERY")
        closes_with(c, err("a 'USER <username>' command was expected!"))


def test_register_then_login_password_as_payload(directory):
    with FramedClient(*directory.address) as c:
        assert c.request("REGISTER", "dora", payload="pass word with spaces") == \
            ack("account dora created")
        assert c.request("REGISTER", "dora", "another-pass") == \
            err("account dora already exists")
        assert c.request("REGISTER", "x/y", "another-pass").type == "ERR"
        assert c.request("REGISTER", "eve", "short").type == "ERR"
        assert c.request("USER", "dora") == ack("hi dora, authentication required")
        assert c.request("PASS", payload="pass word with spaces") == \
            ack("successfully authenticated")


def test_register_with_arg(directory):
    with FramedClient(*directory.address) as c:
        assert c.request("REGISTER", "fred", "fred-password") == ack("account fred created")
    with FramedClient(*directory.address) as c:
        c.login("fred", "fred-password")


# -- auth --------------------------------------------------------------------

@pytest.mark.parametrize("user,password", [("bob", "wrong-password"),
                                           ("nobody", "whatever-pass"),
                                           ("bad/name", "whatever-pass")])
def test_wrong_user_or_password_same_reply(directory, user, password):
    with FramedClient(*directory.address) as c:
        assert c.request("USER", user) == ack(f"hi {user}, authentication required")
        c.send("PASS", password)
        closes_with(c, err("authentication failed"))


def test_auth_anything_else(directory):
    with FramedClient(*directory.address) as c:
        c.request("USER", "bob")
        c.send("QUERY")
        closes_with(c, err("a 'PASS <password>' command was expected!"))


# -- ready -------------------------------------------------------------------

def test_bind_query_leave(directory, passwords):
    with Responder() as peer, FramedClient(*directory.address) as c:
        c.login("bob", passwords["bob"])
        assert c.request("BIND", "127.0.0.1", str(peer.port)) == \
            ack(f"bound successfully to 127.0.0.1:{peer.port}")
        assert c.request("QUERY", "bob") == Message("RESULT", (), f"bob,127.0.0.1,{peer.port}")
        # Registrations outlive the session that made them.
    with FramedClient(*directory.address) as c:
        c.login("corrado", passwords["corrado"])
        assert f"bob,127.0.0.1,{peer.port}" in c.request("QUERY").text.split("\n")
    with FramedClient(*directory.address) as c:
        c.login("bob", passwords["bob"])
        assert c.request("LEAVE") == ack("deregistered from directory")
        assert c.request("QUERY", "bob") == Message("RESULT")


def test_last_bind_wins_and_query_sorted(directory, passwords):
    with Responder() as p1, Responder() as p2, FramedClient(*directory.address) as b, \
            FramedClient(*directory.address) as c:
        b.login("bob", passwords["bob"])
        c.login("corrado", passwords["corrado"])
        assert c.request("BIND", "127.0.0.1", str(p1.port)).type == "ACK"
        assert b.request("BIND", "127.0.0.1", str(p1.port)).type == "ACK"
        assert b.request("BIND", "127.0.0.1", str(p2.port)).type == "ACK"
        lines = c.request("QUERY").text.split("\n")
        assert lines == [f"bob,127.0.0.1,{p2.port}", f"corrado,127.0.0.1,{p1.port}"]
        b.request("LEAVE")
        c.request("LEAVE")


def test_ready_anything_else(directory, passwords):
    with FramedClient(*directory.address) as c:
        c.login("bob", passwords["bob"])
        c.send("HELLO")
        closes_with(c, err("I did not understand the message HELLO"))


@pytest.mark.parametrize("address,port", [
    ("127.0.0.1", None),            # closed port
    ("10.255.255.1", "5555"),       # not the session's own address
    ("127.0.0.1", "80"),            # below 1024
    ("127.0.0.1", "65536"),         # above 65535
    ("localhost", "5555"),          # not an IP literal
])
def test_bind_refused(directory, passwords, address, port):
    with FramedClient(*directory.address) as c:
        c.login("corrado", passwords["corrado"])
        c.send("BIND", address, port or str(closed_port()))
        closes_with(c, err("invalid bind notification"))
    with FramedClient(*directory.address) as c:
        c.login("corrado", passwords["corrado"])
        assert c.request("QUERY", "corrado") == Message("RESULT")


def test_ping_in_every_state(directory, passwords):
    with FramedClient(*directory.address) as c:
        assert c.request("PING") == Message("PONG")
        c.request("USER", "bob")
        assert c.request("PING", "t1") == Message("PONG", ("t1",))
        c.request("PASS", passwords["bob"])
        assert c.request("PING", "t2") == Message("PONG", ("t2",))


def test_pipelined_requests_answered_in_order(directory, passwords):
    with FramedClient(*directory.address) as c:
        c.send_raw(b"USER 0 bob\nPASS 0 " + passwords["bob"].encode() + b"\nPING 0 a\n"
                   b"QUERY 0 nobody\nPING 0 b\n")
        got = [c.recv() for _ in range(5)]
        assert got == [ack("hi bob, authentication required"),
                       ack("successfully authenticated"), Message("PONG", ("a",)),
                       Message("RESULT"), Message("PONG", ("b",))]


# -- policies and throttling (their own directories) ------------------------

def test_bind_policy_any(accounts_dir, passwords):
    with run_directory("--bind-policy", "any", data_dir=accounts_dir) as d, \
            Responder(host="127.0.0.2") as peer, FramedClient(*d.address) as c:
        c.login("bob", passwords["bob"])
        assert c.request("BIND", "127.0.0.2", str(peer.port)) == \
            ack(f"bound successfully to 127.0.0.2:{peer.port}")


def test_registration_closed(tmp_path):
    with run_directory("--registration", "closed", data_dir=str(tmp_path)) as d, \
            FramedClient(*d.address) as c:
        assert c.request("REGISTER", "alice", "alice-password") == \
            err("registration is closed")
        assert c.request("PING") == Message("PONG")


def test_throttle_per_user_and_per_address(tmp_path, passwords):
    for name in ("bob", "corrado"):
        useradd(str(tmp_path), name, passwords[name])
    with run_directory("--throttle-limit", "3", data_dir=str(tmp_path)) as d:
        for _ in range(3):
            with FramedClient(*d.address, source=("127.0.0.3", 0)) as c:
                c.request("USER", "bob")
                c.send("PASS", "wrong-password")
                closes_with(c, err("authentication failed"))
        # bob is now refused, even with the right password, from any address...
        with FramedClient(*d.address) as c:
            c.request("USER", "bob")
            c.send("PASS", passwords["bob"])
            closes_with(c, err("too many failed attempts, retry later"))
        # ...and so is the address 127.0.0.3, for any user.
        with FramedClient(*d.address, source=("127.0.0.3", 0)) as c:
            c.request("USER", "corrado")
            c.send("PASS", passwords["corrado"])
            closes_with(c, err("too many failed attempts, retry later"))
        # Other users from other addresses are unaffected.
        with FramedClient(*d.address) as c:
            c.login("corrado", passwords["corrado"])


def test_connection_closed_helper_reports_eof(directory):
    with FramedClient(*directory.address) as c:
        c.send("NOPE")
        c.recv()
        with pytest.raises(ConnectionClosed):
            c.recv()


def test_bind_probe_does_not_block_other_sessions(directory, passwords):
    """A BIND to an address that never completes the TCP handshake (a listener
    whose accept queue is full, so SYNs are dropped) fails after the bind
    timeout; meanwhile the same worker keeps answering everyone else."""
    jammed = socket.socket()
    jammed.bind(("127.0.0.1", 0))
    jammed.listen(0)
    port = jammed.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):  # fill the accept queue; never accepted
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", port))
            fillers.append(f)
        with FramedClient(*directory.address) as a, FramedClient(*directory.address) as b:
            a.login("corrado", passwords["corrado"])
            b.login("bob", passwords["bob"])
            a.send("BIND", "127.0.0.1", str(port))
            for i in range(5):
                assert b.request("PING", str(i)) == Message("PONG", (str(i),))
            # A's verdict is still pending while B was served.
            assert select.select([a.sock], [], [], 0)[0] == []
            closes_with(a, err("invalid bind notification"))
    finally:
        for f in fillers:
            f.close()
        jammed.close()


def test_dual_stack_listener_binds_ipv4_clients(accounts_dir, passwords):
    """On ``--host ::`` an IPv4 client's source address is IPv4-mapped
    (``::ffff:127.0.0.1``): its BIND of 127.0.0.1, or of the mapped form, is its
    own address, and is stored and listed as plain IPv4."""
    with run_directory("--host", "::", data_dir=accounts_dir) as d, Responder() as peer, \
            FramedClient("127.0.0.1", d.port) as c:
        c.login("bob", passwords["bob"])
        for address in ("127.0.0.1", "::ffff:127.0.0.1"):
            assert c.request("BIND", address, str(peer.port)) == \
                ack(f"bound successfully to 127.0.0.1:{peer.port}")
            assert c.request("QUERY", "bob") == \
                Message("RESULT", (), f"bob,127.0.0.1,{peer.port}")
        c.send("BIND", "127.0.0.2", str(peer.port))
        closes_with(c, err("invalid bind notification"))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_query_limit_truncates_on_the_embedded_registries(tmp_path, workers):
    """``--query-limit`` with the memory and Manager registries: ``QUERY 0``
    lists the first N by name and says so (``RESULT <len> truncated``)."""
    with run_directory("--query-limit", "2", "--workers", workers,
                       data_dir=str(tmp_path)) as d, Responder() as peer:
        for name in ("carl", "anna", "bert"):
            with FramedClient(*d.address) as c:
                assert c.request("REGISTER", name, name + "-password").type == "ACK"
                c.login(name, name + "-password")
                assert c.request("BIND", "127.0.0.1", str(peer.port)).type == "ACK"
        with FramedClient(*d.address) as c:
            c.login("carl", "carl-password")
            assert c.request("QUERY") == Message("RESULT", ("truncated",), (
                f"anna,127.0.0.1,{peer.port}\nbert,127.0.0.1,{peer.port}"))
            assert c.request("QUERY", "carl") == Message("RESULT", (), f"carl,127.0.0.1,{peer.port}")
