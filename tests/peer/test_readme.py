"""The README, as a new user follows it: the `nc` session byte for byte
against a real directory, then the chat walkthrough's `--register` of alice
and bob against that same directory (they must not collide with the account
the `nc` session made)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from support.client import Responder

README = Path(__file__).resolve().parents[2] / "README.md"


def replies(sock: socket.socket, expected: bytes) -> bytes:
    got = b""
    while len(got) < len(expected):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_readme_nc_session_then_the_chat_walkthrough(cluster):
    text = README.read_text(encoding="utf-8")
    block = re.search(r"```\n\$ nc 127\.0\.0\.1 8888\n(.*?)```", text, re.S)
    assert block, "the README's nc session is gone"
    lines = block.group(1).splitlines()
    with Responder() as listener, socket.create_connection(
            ("127.0.0.1", cluster.dir_port), timeout=10) as s:
        request, i = lines[0], 1
        while request:
            header = lines[i]
            kind, length = header.split()[:2]
            if int(length) == 0:
                payload, following = "", lines[i + 1] if i + 1 < len(lines) else ""
                expected = header + "\n"
            else:
                payload = lines[i + 1][:int(length)]
                following = lines[i + 1][int(length):]
                # The README's LEN is the length of the text it shows.
                assert len(payload.encode()) == int(length), (header, lines[i + 1])
                # ...and the text it shows is all of the reply: what follows it
                # on the line is the next request (or nothing).
                assert following == "" or re.fullmatch(r"[A-Z]+ 0( .*)?", following), \
                    (header, lines[i + 1])
                expected = f"{kind} {length}\n{payload}"
            i += 2
            # The README listens on 5555 (`nc -l 5555`); here, on a free port.
            port = str(listener.port)
            sent = request.replace("5555", port)
            want = expected.replace("5555", port)
            if port != "5555" and "5555" in payload:
                want = f"{kind} {len(payload.replace('5555', port))}\n" \
                       f"{payload.replace('5555', port)}"
            s.sendall(sent.encode() + b"\n")
            assert replies(s, want.encode()) == want.encode(), (sent, want)
            request = following
    # The walkthrough: alice and bob create their accounts on the same directory.
    alice = cluster.peer("alice")
    bob = cluster.peer("bob")
    alice.cmd("/msg bob hi bob!")
    assert bob.wait_event("message", text="hi bob!")["from"] == "alice"
