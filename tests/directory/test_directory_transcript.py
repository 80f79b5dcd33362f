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
