"""Real processes for end-to-end tests: start a CLI, wait for its ready line,
stop it cleanly, never leave an orphan.

Why process groups: the directory with ``--workers N`` is a supervisor plus
workers plus a Manager; a test that fails half-way must still take all of
them down.  Each process started here leads its own group and the group is
killed on exit, whatever happened.

Readiness is an event, not a sleep: a thread reads stdout line by line and
``wait_for_line`` blocks on a condition until a line matches or the timeout
passes (then it fails with everything the process said so far).

Stable API (imported by the directory, peer and scaling tests):

- ``start_process(argv, ready=REGEX, env=..., timeout=...) -> Process``
- ``start_directory(*args, data_dir=..., env=..., timeout=...) -> Directory``
- ``run_directory(...)``: context manager around ``start_directory``
- ``useradd(data_dir, name, password, env=None)``: create an account via the CLI
- ``test_env(**extra)``: os.environ plus ``EURECHAT_ARGON2_MEMORY_KIB=8`` and
  ``EURECHAT_SCRYPT_N=16`` (cheap hashes for tests) and unbuffered output
- ``directory_cmd()``: ``[sys.executable, "-m", "eurechat.directory"]``
- ``Process.wait_for_line`` / ``wait_for_log`` (stdout / stderr lines, by
  regex, from index ``start``), ``stderr()``, ``stop()``, ``kill_group()``,
  ``group_alive()``, ``wait_group_gone(timeout)`` (pidfds, no polling)
- ``proc_table()``, ``children(pid)``, ``cmdline(pid)``, ``worker_pids(supervisor_pid)``:
  what /proc says about a process tree
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, Iterator, List, Optional, Pattern, Sequence, Tuple, Union

__all__ = ["Process", "Directory", "start_process", "start_directory", "run_directory",
           "useradd", "test_env", "child_env", "directory_cmd", "READY_RE"]

READY_RE = re.compile(r"^eurechat-directory listening on (?P<host>.+):(?P<port>\d+)$")
DEFAULT_TIMEOUT = 20.0


def test_env(**extra: str) -> Dict[str, str]:
    """Environment for a child: cheap password hashes (tests only), unbuffered stdout."""
    env = dict(os.environ)
    env.setdefault("EURECHAT_ARGON2_MEMORY_KIB", "8")
    env.setdefault("EURECHAT_SCRYPT_N", "16")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


test_env.__test__ = False  # a helper, not a test, wherever it is imported
child_env = test_env


def directory_cmd() -> List[str]:
    return [sys.executable, "-m", "eurechat.directory"]


def proc_table() -> Iterator[Tuple[int, str, int, int]]:
    """(pid, state letter, ppid, pgrp) of every process, from /proc (those
    that exit while it is read are skipped)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        yield int(entry), fields[0].decode(), int(fields[1]), int(fields[2])


def children(pid: int, zombies: bool = False) -> Dict[int, str]:
    """pid -> state letter of each child of ``pid`` (zombies only if asked)."""
    return {child: state for child, state, ppid, _ in proc_table()
            if ppid == pid and (zombies or state != "Z")}


def cmdline(pid: int) -> str:
    """``pid``'s command line, arguments joined by spaces ("" once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def worker_pids(supervisor: int) -> List[int]:
    """The live worker processes of a ``--workers N`` directory, sorted."""
    return sorted(p for p in children(supervisor) if "--worker-fd" in cmdline(p))


def wait_pids_gone(pids, timeout: float = 10.0) -> List[int]:
    """Wait (on pidfds: an event, not polling) until each of ``pids`` has
    exited; returns, sorted, those still running at the timeout."""
    fds = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + timeout
    try:
        while fds:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(list(fds), [], [], left)
            for fd in ready:
                os.close(fd)
                del fds[fd]
        return sorted(fds.values())
    finally:
        for fd in fds:
            os.close(fd)


class Process:
    """A child process in its own process group, its stdout followed by a thread."""

    def __init__(self, argv: Sequence[str], env: Optional[Dict[str, str]] = None,
                 cwd: Optional[str] = None, stdin: Union[int, None] = subprocess.DEVNULL
                 ) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env if env is not None else test_env(), cwd=cwd, start_new_session=True)
        self.pid = self.proc.pid
        self.lines: List[str] = []       # stdout, line by line
        self.err_lines: List[str] = []   # stderr (logs), line by line
        self._cond = threading.Condition()
        self._eof = False
        self._err_eof = False
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"stdout-{self.pid}")
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True,
                                            name=f"stderr-{self.pid}")
        self._err_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._cond:
                self.err_lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._err_eof = True
            self._cond.notify_all()

    # -- waiting -----------------------------------------------------------
    def wait_for_line(self, pattern: Union[str, Pattern[str]], timeout: float = DEFAULT_TIMEOUT,
                      start: int = 0) -> re.Match[str]:
        """Block until a stdout line (index >= ``start``) matches ``pattern``."""
        return self._wait(self.lines, "stdout", pattern, timeout, start)

    def wait_for_log(self, pattern: Union[str, Pattern[str]], timeout: float = DEFAULT_TIMEOUT,
                     start: int = 0) -> re.Match[str]:
        """Block until a stderr (log) line (index >= ``start``) matches ``pattern``.
        ``len(p.err_lines)`` taken before an action is the ``start`` that
        ignores what was logged earlier."""
        return self._wait(self.err_lines, "stderr", pattern, timeout, start)

    def _wait(self, lines: List[str], stream: str, pattern, timeout: float,
              start: int) -> re.Match[str]:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(lines):
                    m = regex.search(lines[index])
                    index += 1
                    if m:
                        return m
                left = deadline - time.monotonic()
                eof = self._eof if stream == "stdout" else self._err_eof
                if eof or left <= 0:
                    break
                self._cond.wait(left)
        why = "stream closed" if eof else f"no match within {timeout} s"
        raise AssertionError(
            f"{self.argv!r}: {why} waiting for {regex.pattern!r} on {stream}\n"
            f"--- stdout ---\n" + "\n".join(self.lines) + "\n--- stderr ---\n" + self.stderr())

    def stderr(self) -> str:
        """Everything logged on stderr so far."""
        with self._cond:
            return "\n".join(self.err_lines) + ("\n" if self.err_lines else "")

    # -- stopping ----------------------------------------------------------
    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        return self.proc.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the main process, wait for its exit code, then make sure the
        whole group is gone."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group()
        return self.proc.wait(timeout)

    def kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        self._err_reader.join(5)

    def wait_group_gone(self, timeout: float = 10.0) -> List[int]:
        """Wait (on pidfds: an event, not polling) until every process of the
        group has exited; returns the PIDs still alive at the timeout."""
        return wait_pids_gone(self.group_alive(), timeout)

    def group_alive(self) -> List[int]:
        """PIDs still in this process group (empty when everything is gone)."""
        return [pid for pid, state, _, pgrp in proc_table()
                if pgrp == self.pid and state != "Z"]

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_process(argv: Sequence[str], ready: Union[str, Pattern[str], None] = None,
                  env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
                  timeout: float = DEFAULT_TIMEOUT, stdin=subprocess.DEVNULL) -> Process:
    """Start ``argv``; with ``ready``, wait for a matching stdout line (killing the
    group if it never comes)."""
    proc = Process(argv, env=env, cwd=cwd, stdin=stdin)
    if ready is not None:
        try:
            proc.wait_for_line(ready, timeout)
        except BaseException:
            proc.kill_group()
            raise
    return proc


class Directory(Process):
    """A running ``eurechat-directory``; ``host``/``port``/``address`` once ready."""

    host: str
    port: int
    data_dir: str

    _owned_dir: Optional[str] = None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Stop it; a data directory that ``start_directory`` made up is removed."""
        code = super().stop(sig, timeout)
        if self._owned_dir:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None
        return code

    @property
    def address(self) -> tuple:
        return (self.host, self.port)

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    def useradd(self, name: str, password: str) -> None:
        useradd(self.data_dir, name, password)


def start_directory(*args: str, data_dir: Optional[str] = None,
                    env: Optional[Dict[str, str]] = None, timeout: float = DEFAULT_TIMEOUT,
                    port: int = 0, cmd: Optional[Sequence[str]] = None) -> Directory:
    """Start the directory (``--port 0`` unless ``port`` is given) and wait for
    its ready line.  ``args`` are extra CLI options; ``data_dir`` defaults to a
    fresh temporary directory.  The caller stops it (``.stop()``)."""
    owned = data_dir is None
    if data_dir is None:
        data_dir = tempfile.mkdtemp(prefix="eurechat-dir-")
    argv = list(cmd or directory_cmd()) + ["--port", str(port), "--data-dir", data_dir,
                                           *args]
    d = Directory(argv, env=env if env is not None else test_env())
    try:
        m = d.wait_for_line(READY_RE, timeout)
    except BaseException:
        d.kill_group()
        raise
    d.host, d.port, d.data_dir = m["host"], int(m["port"]), data_dir
    if owned:
        d._owned_dir = data_dir
    return d


@contextlib.contextmanager
def run_directory(*args: str, data_dir: Optional[str] = None,
                  env: Optional[Dict[str, str]] = None, timeout: float = DEFAULT_TIMEOUT,
                  port: int = 0) -> Iterator[Directory]:
    """``with run_directory(data_dir=str(tmp_path)) as d: ... d.host, d.port``"""
    d = start_directory(*args, data_dir=data_dir, env=env, timeout=timeout, port=port)
    try:
        yield d
    finally:
        d.stop()


def useradd(data_dir: str, name: str, password: str,
            env: Optional[Dict[str, str]] = None) -> None:
    """Create an account through the real CLI (``--password-stdin``)."""
    res = subprocess.run(
        directory_cmd() + ["useradd", name, "--password-stdin", "--data-dir", data_dir],
        input=(password + "\n").encode("utf-8"), capture_output=True,
        env=env if env is not None else test_env(), timeout=60)
    if res.returncode != 0:
        raise AssertionError(f"useradd {name} failed ({res.returncode}): "
                             f"{res.stderr.decode(errors='replace')}")
