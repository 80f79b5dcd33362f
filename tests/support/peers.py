"""Helpers for the peer tests: a real directory, real peer processes.

A peer is driven the way a program would drive it: commands on stdin,
``--json`` events read from stdout.  Every wait is on an event (a JSON line)
with a timeout; nothing sleeps.  Retry and backoff timings are shortened
through the environment so recovery paths run in well under a second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from support.processes import Process, start_directory, start_process, test_env

PASSWORD = "correct horse battery"

#: Short timings for tests: recovery in a fraction of a second.
FAST = {
    "EURECHAT_RETRY_BASE": "0.05",
    "EURECHAT_RETRY_MAX": "0.3",
    "EURECHAT_DIRECTORY_RETRY_BASE": "0.05",
    "EURECHAT_DIRECTORY_RETRY_MAX": "0.3",
    "EURECHAT_QUERY_TTL": "0.1",
    "EURECHAT_DIRECTORY_WAIT": "1",
    "EURECHAT_EOF_LINGER": "0",
}


#: The --json events of SPEC sections 4 and 5.5 and their exact keys.
SPEC_EVENTS = {
    "ready": {"event", "user", "listen"},
    "message": {"event", "from", "id", "text", "verified"},
    "queued": {"event", "to", "id"},
    "delivered": {"event", "to", "id"},
    "who": {"event", "users"},
    "pong": {"event", "from", "ms"},
    "pending": {"event", "messages"},
    "error": {"event", "text"},
    # SPEC section 5.5
    "keychange": {"event", "name", "old", "new"},
    "verify": {"event", "name", "number", "own", "theirs"},
    "sent": {"event", "to", "id"},
}

#: Events beyond the SPEC, each only in answer to a command beyond the SPEC
#: (a program that speaks only the SPEC never sees them).
EXTRA_EVENTS = {
    "waiting": {"event", "recipients"},   # /waiting
}


#: Where /proc/PID/wchan shows a process sleeping on a full pipe.
BLOCKED_ON_STDOUT = ("pipe_write", "poll_schedule_timeout")


def wait_blocked_on_stdout(pid: int, timeout: float = 30.0) -> str:
    """Wait until the process sleeps writing to (or waiting for room in) its
    stdout pipe, as the kernel reports it in /proc; returns that wchan."""
    deadline = time.monotonic() + timeout
    wchan = ""
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/wchan") as f:
            wchan = f.read()
        if any(w in wchan for w in BLOCKED_ON_STDOUT):
            return wchan
        time.sleep(0.01)   # polling the kernel's view of an event we cannot be told about
    raise AssertionError(f"the peer never blocked on its stdout (wchan {wchan!r})")


def read_json_lines(fd: int, whole_lines: bool = True) -> list:
    """Read ``fd`` to its end and parse each line as a JSON event;
    ``whole_lines``: fail if the last line was cut off."""
    data = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    if whole_lines:
        assert data.endswith(b"\n") or not data, "a partial line reached the reader"
    return [json.loads(line) for line in data.splitlines()]


def peer_cmd() -> List[str]:
    return [sys.executable, "-m", "eurechat.peer"]


class PeerProc:
    """A ``python -m eurechat.peer --json`` child with helpers to wait on events."""

    def __init__(self, proc: Process) -> None:
        self.p = proc
        self._lock = threading.Lock()

    @property
    def lines(self) -> List[str]:
        return self.p.lines

    def events(self, kind: Optional[str] = None) -> List[dict]:
        out = []
        for line in list(self.p.lines):
            try:
                e = json.loads(line)
            except ValueError:
                raise AssertionError(f"not a JSON line on stdout: {line!r}") from None
            keys = SPEC_EVENTS.get(e.get("event")) or EXTRA_EVENTS.get(e.get("event"))
            assert keys is not None and set(e) == keys, f"not a SPEC section 4 event: {line!r}"
            if kind is None or e.get("event") == kind:
                out.append(e)
        return out

    def cmd(self, *lines: str) -> None:
        assert self.p.proc.stdin is not None
        with self._lock:
            self.p.proc.stdin.write("".join(line + "\n" for line in lines).encode("utf-8"))
            self.p.proc.stdin.flush()

    def wait_for(self, pred: Callable[[List[dict]], bool], what: str,
                 timeout: float = 20.0) -> List[dict]:
        """Block until ``pred(all events so far)`` holds (re-checked on each line)."""
        deadline = time.monotonic() + timeout
        cond = self.p._cond
        with cond:
            while True:
                evs = self.events()
                if pred(evs):
                    return evs
                left = deadline - time.monotonic()
                if self.p._eof or left <= 0:
                    break
                cond.wait(left)
        raise AssertionError(
            f"peer {self.p.argv[4]}: {'exited' if self.p._eof else 'timeout'} waiting for {what}\n"
            + "--- stdout (tail) ---\n" + "\n".join(self.p.lines[-30:])
            + "\n--- stderr (tail) ---\n" + self.p.stderr()[-3000:])

    def wait_event(self, kind: str, timeout: float = 20.0, start: int = 0,
                   **match) -> dict:
        """The first event of ``kind`` (at index >= ``start`` among all events)
        whose fields equal ``match``."""
        found: List[dict] = []

        def pred(evs: List[dict]) -> bool:
            for e in evs[start:]:
                if e.get("event") == kind and all(e.get(k) == v for k, v in match.items()):
                    found.append(e)
                    return True
            return False

        self.wait_for(pred, f"{kind} {match}", timeout)
        return found[0]

    def who_until(self, done: Callable[[dict], bool], name: str = "",
                  timeout: float = 30.0) -> dict:
        """Repeat ``/who [name]`` until an answer satisfies ``done``; return it.

        Each try waits on its own answer (a ``who`` or an ``error`` event), so
        this waits on events, never on a clock.  It is bounded by *time*, not
        by a number of tries: a try takes a millisecond or two, so a count
        would run out before a reconnect backoff does (CI saw 200 tries end
        inside the peers' 0.3 s backoff after a directory restart)."""
        deadline = time.monotonic() + timeout
        answers: List[dict] = []
        while True:
            mark = len(self.events())
            self.cmd(f"/who {name}".rstrip())
            evs = self.wait_for(
                lambda evs, m=mark: any(x.get("event") in ("who", "error") for x in evs[m:]),
                "who or error")
            answer = [x for x in evs[mark:] if x.get("event") in ("who", "error")][0]
            answers.append(answer)
            if answer["event"] == "who" and done(answer):
                return answer
            if time.monotonic() > deadline:
                raise AssertionError(f"/who {name}: no satisfying answer within {timeout} s "
                                     f"({len(answers)} tries); last answers: {answers[-3:]}")

    def count(self, kind: str, n: int, timeout: float = 60.0) -> List[dict]:
        """Wait for at least ``n`` events of ``kind``; return them."""
        evs = self.wait_for(lambda evs: sum(e.get("event") == kind for e in evs) >= n,
                            f"{n} x {kind}", timeout)
        return [e for e in evs if e.get("event") == kind]

    def kill9(self) -> None:
        os.killpg(self.p.pid, signal.SIGKILL)
        self.p.proc.wait(10)
        self.p._reader.join(5)

    def quit(self, timeout: float = 20.0) -> int:
        self.cmd("/quit")
        return self.p.proc.wait(timeout)

    def stop(self) -> None:
        self.p.stop()


class Cluster:
    """One directory, and peers started against it; everything is torn down at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.dir_data = str(tmp / "directory")
        self.directory = start_directory(data_dir=self.dir_data, env=test_env())
        self.dir_port = self.directory.port
        self.procs: List[Process] = []

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.dir_port}"

    def env(self, **extra: str) -> Dict[str, str]:
        return test_env(**{"EURECHAT_PASSWORD": PASSWORD, **FAST, **extra})

    def peer(self, name: str, *extra: str, register: bool = True, wait: bool = True,
             env: Optional[Dict[str, str]] = None, directory: Optional[str] = None,
             cmd: Optional[List[str]] = None) -> PeerProc:
        argv = (cmd or peer_cmd()) + ["--user", name, "--directory", directory or self.hostport,
                                      "--data-dir", str(self.tmp / "peers" / name), "--json",
                                      *(["--register"] if register else []), *extra]
        proc = start_process(argv, ready=r'"event": "ready"' if wait else None,
                             env=env or self.env(), stdin=subprocess.PIPE, timeout=30)
        self.procs.append(proc)
        return PeerProc(proc)

    def stop_directory(self) -> None:
        self.directory.stop()

    def restart_directory(self) -> None:
        self.directory = start_directory(data_dir=self.dir_data, env=test_env(),
                                         port=self.dir_port)
        self.procs.append(self.directory)

    def close(self) -> None:
        for p in self.procs:
            p.stop(timeout=5)
        self.directory.stop(timeout=5)
