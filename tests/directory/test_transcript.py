"""The raw session of SPEC §2, byte for byte, through the real CLI."""

from __future__ import annotations

import socket

from support.client import Responder


def exchange(sock: socket.socket, request: bytes, expected: bytes) -> None:
    sock.sendall(request)
    got = b""
    while len(got) < len(expected):
        chunk = sock.recv(65536)
        assert chunk, f"closed after {got!r}, expected {expected!r}"
        got += chunk
    assert got == expected


def test_raw_transcript(directory, passwords):
    password = passwords["corrado"]
    with Responder() as peer, socket.create_connection(directory.address, timeout=10) as s:
        exchange(s, b"USER 0 corrado\n", b"ACK 35\nhi corrado, authentication required")
        exchange(s, f"PASS 0 {password}\n".encode(), b"ACK 26\nsuccessfully authenticated")
        bound = f"bound successfully to 127.0.0.1:{peer.port}".encode()
        exchange(s, f"BIND 0 127.0.0.1 {peer.port}\n".encode(),
                 b"ACK %d\n%s" % (len(bound), bound))
        line = f"corrado,127.0.0.1,{peer.port}".encode()
        exchange(s, b"QUERY 0\n", b"RESULT %d\n%s" % (len(line), line))
        exchange(s, b"LEAVE 0\n", b"ACK 27\nderegistered from directory")
        exchange(s, b"QUERY 0 corrado\n", b"RESULT 0\n")


def test_typed_by_hand_with_crlf_and_trailing_spaces(directory, passwords):
    """nc/telnet users type CR LF and stray spaces; both are tolerated."""
    with socket.create_connection(directory.address, timeout=10) as s:
        exchange(s, b"LOGIN 0 bob  \r\n", b"ACK 31\nhi bob, authentication required")
        exchange(s, f"PASS 0 {passwords['bob']}\r\n".encode(),
                 b"ACK 26\nsuccessfully authenticated")
        exchange(s, b"PING 0 abc\r\n", b"PONG 0 abc\n")


def closes(sock: socket.socket, request: bytes, expected: bytes) -> None:
    """``request`` is answered with exactly ``expected``, then the server closes."""
    sock.sendall(request)
    got = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    assert got == expected


def test_every_row_of_the_state_table_byte_for_byte(directory, passwords):
    """Each row of SPEC §2's table, raw bytes in and exact bytes out (the
    decoder of a test client would hide stray spaces or a trailing newline)."""
    addr = directory.address
    pw = passwords["bob"].encode()
    # new: PING (with and without token), REGISTER as arg and as payload, LOGIN.
    with socket.create_connection(addr, timeout=10) as s:
        exchange(s, b"PING 0\n", b"PONG 0\n")
        exchange(s, b"PING 0 t0\n", b"PONG 0 t0\n")
        exchange(s, b"REGISTER 0 row_a row-a-password\n", b"ACK 21\naccount row_a created")
        exchange(s, b"REGISTER 14 row.b\nrow-b-password", b"ACK 21\naccount row.b created")
        exchange(s, b"REGISTER 0 row_a row-a-password\n",
                 b"ERR 28\naccount row_a already exists")
        exchange(s, b"LOGIN 0 row.b\n", b"ACK 33\nhi row.b, authentication required")
        # auth: PING, then PASS as payload.
        exchange(s, b"PING 0 t1\n", b"PONG 0 t1\n")
        exchange(s, b"PASS 14\nrow-b-password", b"ACK 26\nsuccessfully authenticated")
        # ready: PING, QUERY of an unknown name, QUERY 0 with nobody bound, LEAVE.
        exchange(s, b"PING 0 t2\n", b"PONG 0 t2\n")
        exchange(s, b"QUERY 0 nobody-by-that-name\n", b"RESULT 0\n")
        exchange(s, b"LEAVE 0\n", b"ACK 27\nderegistered from directory")
        closes(s, b"HELLO 0\n", b"ERR 38\nI did not understand the message HELLO")
    with socket.create_connection(addr, timeout=10) as s:
        closes(s, b"QUERY 0\n", b"ERR 41\na 'USER <username>' command was expected!")
    with socket.create_connection(addr, timeout=10) as s:
        exchange(s, b"USER 0 bob\n", b"ACK 31\nhi bob, authentication required")
        closes(s, b"QUERY 0\n", b"ERR 41\na 'PASS <password>' command was expected!")
    for user, password in ((b"bob", b"not-" + pw), (b"nobody", pw)):
        with socket.create_connection(addr, timeout=10) as s:
            exchange(s, b"USER 0 %s\n" % user,
                     b"ACK %d\nhi %s, authentication required" % (28 + len(user), user))
            closes(s, b"PASS 0 %s\n" % password, b"ERR 21\nauthentication failed")
    # QUERY 0 lists sorted by name, lines joined by LF, no trailing newline.
    with Responder() as peer:
        binds = []
        for name, password in ((b"row_a", b"row-a-password"), (b"row.b", b"row-b-password"),
                               (b"bob", pw)):
            s = socket.create_connection(addr, timeout=10)
            binds.append(s)
            s.sendall(b"USER 0 %s\nPASS 0 %s\n" % (name, password))
            bound = b"bound successfully to 127.0.0.1:%d" % peer.port
            exchange(s, b"BIND 0 127.0.0.1 %d\n" % peer.port,
                     b"ACK %d\nhi %s, authentication required" % (28 + len(name), name)
                     + b"ACK 26\nsuccessfully authenticated"
                     + b"ACK %d\n%s" % (len(bound), bound))
        body = b"\n".join(b"%s,127.0.0.1,%d" % (n, peer.port) for n in (b"bob", b"row.b", b"row_a"))
        exchange(binds[0], b"QUERY 0\n", b"RESULT %d\n%s" % (len(body), body))
        for s in binds:
            exchange(s, b"LEAVE 0\n", b"ACK 27\nderegistered from directory")
            s.close()


def test_register_validation_through_the_cli(directory):
    """Usernames 1-32 of [A-Za-z0-9_.-] not starting with '.' or '-'; passwords
    8-1024 bytes.  A refused REGISTER is answered and the session stays."""
    bad_name = b"ERR 81\ninvalid username: 1-32 characters of [A-Za-z0-9_.-], " \
               b"not starting with '.' or '-'"
    bad_password = b"ERR 33\ninvalid password: 8 to 1024 bytes"
    n32 = b"n" * 32
    with socket.create_connection(directory.address, timeout=10) as s:
        for name in (b"n" * 33, b".dot", b"-dash", b"sp\xc3\xa9cial", b"a/b"):
            exchange(s, b"REGISTER 0 %s good-password\n" % name, bad_name)
        exchange(s, b"REGISTER 0 shortpw 1234567\n", bad_password)
        exchange(s, b"REGISTER 1025 longpw\n" + b"p" * 1025, bad_password)
        exchange(s, b"REGISTER 0 %s 12345678\n" % n32, b"ACK 48\naccount %s created" % n32)
        exchange(s, b"REGISTER 1024 x-1.Z_\n" + b"p" * 1024, b"ACK 22\naccount x-1.Z_ created")
        exchange(s, b"LOGIN 0 x-1.Z_\n", b"ACK 34\nhi x-1.Z_, authentication required")
        exchange(s, b"PASS 1024\n" + b"p" * 1024, b"ACK 26\nsuccessfully authenticated")
