"""The terminal mode: a real pseudo-terminal, prompt_toolkit on the other side.

A message arriving while the user is half-way through a line must not eat
that line: it is printed above the prompt, the typed text is redrawn, and
finishing the line sends exactly what was typed.
"""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import threading
import time

from support.peers import peer_cmd

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>]|\r")


class Pty:
    """A child on a pseudo-terminal; its screen output is collected by a thread."""

    def __init__(self, argv, env) -> None:
        master, slave = pty.openpty()
        self.master = master
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.raw = bytearray()
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                data = b""
            with self.cond:
                if not data:
                    self.raw += b"\0EOF"
                    self.cond.notify_all()
                    return
                self.raw += data
                # Answer prompt_toolkit's cursor position request like a terminal.
                if b"\x1b[6n" in data:
                    os.write(self.master, b"\x1b[1;1R")
                self.cond.notify_all()

    def text(self) -> str:
        return ANSI.sub(b"", bytes(self.raw)).decode("utf-8", "replace")

    def wait_for(self, needle: str, start: int = 0, timeout: float = 20.0) -> int:
        """Wait until ``needle`` appears in the (escape-stripped) screen text at or
        after ``start``; return the index just past it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                text = self.text()
                i = text.find(needle, start)
                if i >= 0:
                    return i + len(needle)
                left = deadline - time.monotonic()
                if left <= 0 or text.endswith("\0EOF"):
                    raise AssertionError(f"{needle!r} not on the screen:\n{text[-3000:]}")
                self.cond.wait(left)

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode("utf-8"))

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        os.close(self.master)
        self.thread.join(5)


def test_terminal_keeps_the_typed_line_while_messages_arrive(cluster):
    bob = cluster.peer("bob")
    env = cluster.env(TERM="xterm", COLUMNS="100", LINES="30")
    term = Pty(peer_cmd() + ["--user", "alice", "--register", "--directory", cluster.hostport,
                             "--data-dir", str(cluster.tmp / "peers" / "alice")], env)
    try:
        pos = term.wait_for("you are alice, listening on")
        pos = term.wait_for("alice>", pos)
        term.type("/msg bob first line\r")
        bob.wait_event("message", text="first line")
        term.type("half typed")
        pos = term.wait_for("half typed", pos)
        bob.cmd("/msg alice interrupting you")
        pos = term.wait_for("bob: interrupting you", pos)
        # The prompt and the half-typed line are drawn again below the message.
        pos = term.wait_for("alice> half typed", pos)
        term.type(" and finished\r")
        m = bob.wait_event("message", text="half typed and finished")
        assert m["from"] == "alice"
        term.type("/quit\r")
        assert term.proc.wait(20) == 0
    finally:
        term.close()


def test_password_prompt_on_the_terminal(cluster):
    """No EURECHAT_PASSWORD, no --password-file: the peer asks on the terminal
    (without echoing what is typed) and logs in with the answer."""
    env = cluster.env(TERM="xterm", COLUMNS="100", LINES="30")
    del env["EURECHAT_PASSWORD"]
    term = Pty(peer_cmd() + ["--user", "carol", "--register", "--directory", cluster.hostport,
                             "--data-dir", str(cluster.tmp / "peers" / "carol")], env)
    try:
        pos = term.wait_for("password for carol:")
        term.type("a secret typed here\r")
        pos = term.wait_for("you are carol, listening on", pos)
        assert "a secret typed here" not in term.text()
        term.type("/quit\r")
        assert term.proc.wait(20) == 0
    finally:
        term.close()
    # The account was created with the typed password: it logs in with it.
    bob = cluster.peer("carol", register=False,
                       env=cluster.env(EURECHAT_PASSWORD="a secret typed here"))
    assert bob.events("ready")
