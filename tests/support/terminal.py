"""A child process on a real pseudo-terminal, for the tests of what a person
sees: prompt_toolkit on the other side, the screen read back as text (escape
sequences stripped) and waited on, keys typed."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import threading
import time

__all__ = ["Pty", "ANSI"]

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
