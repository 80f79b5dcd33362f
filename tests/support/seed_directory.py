"""A stand-in for the seed course's directory server: exactly its grammar.

What it accepts, and nothing more (SPEC §5.4, last point):

- every ``recv`` must hold exactly one whole message (the seed reads one
  request per read: a client that pipelines, or glues two messages into one
  write, is speaking garbage to it);
- state new: ``USER 0 <name>`` (one argument);  auth: ``PASS 0 <password>``
  (one argument, no payload);  ready: ``BIND 0 <address> <port>``,
  ``QUERY 0 [name]``, ``LEAVE 0``;  any state: ``PING 0 [token]``;
- anything else — ``LOGIN``, ``REGISTER``, ``HELLO``, ``CACERT``, a password
  as a payload, the bytes of a TLS ClientHello — gets
  ``ERR a 'USER <username>' command was expected!`` (or the PASS / ready
  equivalent) and the connection is closed.

Everything received is recorded (``chunks``: raw bytes per read;
``requests``: the messages understood; ``errors``: what it refused), for
tests to assert on; ``wait(pred)`` blocks until a read makes ``pred`` true.
"""

from __future__ import annotations

import socket
import threading
from typing import Dict, List, Optional, Tuple

from eurechat.errors import ProtocolError
from eurechat.framing import Message, parse_all

__all__ = ["SeedDirectory", "EXPECT_USER"]

EXPECT_USER = "a 'USER <username>' command was expected!"
EXPECT_PASS = "a 'PASS <password>' command was expected!"


def _frame(type_: str, text: str = "") -> bytes:
    return bytes(Message(type_, (), text.encode()))


class SeedDirectory:
    """Thread-per-connection server on loopback; ``accounts`` name -> password."""

    def __init__(self, accounts: Dict[str, str], host: str = "127.0.0.1") -> None:
        self.accounts = dict(accounts)
        self.registrations: Dict[str, Tuple[str, int]] = {}
        self.chunks: List[bytes] = []
        self.requests: List[Message] = []
        self.errors: List[str] = []
        self._lock = threading.Condition()
        self.sock = socket.create_server((host, 0))
        self.host, self.port = self.sock.getsockname()[:2]
        self._conns: List[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _one(self, data: bytes) -> Optional[Message]:
        """The single message ``data`` must be, or None (garbage to the seed)."""
        try:
            rest, msgs = parse_all(data)
        except (ProtocolError, ValueError):
            return None
        if rest or len(msgs) != 1:
            return None
        return msgs[0]

    def _handle(self, conn: socket.socket) -> None:
        state, user = "new", ""
        try:
            conn.settimeout(60)
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                msg = self._one(data)
                with self._lock:
                    self.chunks.append(data)
                    if msg is not None:
                        self.requests.append(msg)
                    reply, close = self._reply(msg, state, user)
                    self._lock.notify_all()
                if msg is not None and reply.startswith(b"ACK"):
                    if state == "new":
                        state, user = "auth", msg.args[0]
                    elif state == "auth":
                        state = "ready"
                conn.sendall(reply)
                if close:
                    return
        except OSError:
            return
        finally:
            conn.close()

    def _reply(self, msg: Optional[Message], state: str, user: str) -> Tuple[bytes, bool]:
        expect = {"new": EXPECT_USER, "auth": EXPECT_PASS}.get(state, "")
        if msg is None:
            self.errors.append(f"garbage in state {state}")
            return _frame("ERR", expect or "I did not understand the message"), True
        t, args = msg.type, msg.args
        if t == "PING" and not msg.payload and len(args) <= 1:
            return bytes(Message("PONG", args)), False
        if state == "new":
            if t == "USER" and len(args) == 1 and not msg.payload:
                return _frame("ACK", f"hi {args[0]}, authentication required"), False
            self.errors.append(f"{t} in state new")
            return _frame("ERR", EXPECT_USER), True
        if state == "auth":
            if t == "PASS" and len(args) == 1 and not msg.payload:
                if self.accounts.get(user) == args[0]:
                    return _frame("ACK", "successfully authenticated"), False
                return _frame("ERR", "authentication failed"), True
            self.errors.append(f"{t} in state auth")
            return _frame("ERR", EXPECT_PASS), True
        if t == "BIND" and len(args) == 2 and args[1].isdigit() and not msg.payload:
            self.registrations[user] = (args[0], int(args[1]))
            return _frame("ACK", f"bound successfully to {args[0]}:{args[1]}"), False
        if t == "QUERY" and len(args) <= 1 and not msg.payload:
            regs = sorted(self.registrations.items())
            lines = [f"{n},{a},{p}" for n, (a, p) in regs if not args or n == args[0]]
            return _frame("RESULT", "\n".join(lines)), False
        if t == "LEAVE" and not args and not msg.payload:
            self.registrations.pop(user, None)
            return _frame("ACK", "deregistered from directory"), False
        self.errors.append(f"{t} in state ready")
        return _frame("ERR", f"I did not understand the message {t}"), True

    def wait(self, pred, what: str, timeout: float = 20.0) -> None:
        """Block until ``pred(self)`` holds (checked after each read)."""
        with self._lock:
            if not self._lock.wait_for(lambda: pred(self), timeout):
                raise AssertionError(f"seed directory: timeout waiting for {what}; "
                                     f"received {self.chunks[-5:]!r}")

    def received(self) -> bytes:
        with self._lock:
            return b"".join(self.chunks)

    def close(self) -> None:
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass

    def __enter__(self) -> SeedDirectory:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
