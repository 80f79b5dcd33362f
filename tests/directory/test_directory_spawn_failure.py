"""A worker slot whose restart fails is restarted later, not lost for ever.

Real processes through the CLI.  The running supervisor's descriptor limit is
lowered (``prlimit``, Linux) so that starting a worker fails with EMFILE --
after the ready pipe was opened, the path that could leak it -- then a worker
is killed.  What must hold: an ERROR names the errno and says it will retry;
once the limit is back, the slot serves again (a new process, answering on
the port); the supervisor holds no more pipes or files than before.  Every
wait is on a log line or a reply, with a timeout.
"""

from __future__ import annotations

import collections
import os
import resource
import signal
import time

from eurechat.framing import Message
from support.client import FramedClient, Responder
from support.processes import Directory, start_directory

SERVING_RE = r"worker {} serving \(pid (\d+)\)"
WAIT = 30.0  # generous: the machine may be loaded; never reached when it works


def worker_pids(d: Directory) -> list:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if int(fields[1]) == d.pid and fields[0] != b"Z" and b"--worker-fd" in cmd:
                out.append(int(entry))
    return sorted(out)


def open_fds(pid: int) -> dict:
    """fd number -> what it is (``pipe:[…]``, ``socket:[…]``, a path)."""
    out = {}
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        try:
            out[int(name)] = os.readlink(f"{base}/{name}")
        except OSError:
            continue  # closed meanwhile
    return out


def kinds(fds: dict) -> collections.Counter:
    return collections.Counter(t.split(":")[0] if t.endswith("]") else t
                               for t in fds.values())


def limit_allowing(fds: dict, free: int) -> int:
    """The soft RLIMIT_NOFILE under which exactly ``free`` more descriptors can
    be opened (a new descriptor takes the lowest free number, and must be below
    the limit)."""
    fd = 0
    while True:
        if fd not in fds:
            free -= 1
            if free < 0:
                return fd
        fd += 1


def served_by(d: Directory, client: FramedClient, mark: int) -> int:
    """PID of the worker that accepted ``client`` (its DEBUG line)."""
    port = client.sock.getsockname()[1]
    return int(d.wait_for_log(
        rf" (\d+) eurechat\.directory\.server DEBUG: connection from 127\.0\.0\.1:{port}$",
        start=mark, timeout=WAIT).group(1))


def test_a_failed_restart_is_retried_until_it_works(tmp_path):
    d = start_directory("--workers", "2", "--log-level", "debug", "--check-interval", "3600",
                        data_dir=str(tmp_path))
    lowered = False
    original = resource.prlimit(d.pid, resource.RLIMIT_NOFILE)
    try:
        workers = worker_pids(d)
        assert len(workers) == 2
        before = open_fds(d.pid)
        mark = len(d.err_lines)
        # Room for 3 descriptors: the ready pipe (2) opens, then the spawn
        # itself (/dev/null, its exec-error pipe) fails with EMFILE.
        resource.prlimit(d.pid, resource.RLIMIT_NOFILE,
                         (limit_allowing(before, 3), original[1]))
        lowered = True
        os.kill(workers[0], signal.SIGKILL)
        index = d.wait_for_log(rf"worker (\d) \(pid {workers[0]}\) exited with -9; restarting",
                               start=mark, timeout=WAIT).group(1)
        d.wait_for_log(rf"ERROR: worker {index}: cannot start a process: EMFILE \(Too many "
                       rf"open files\); will retry in [\d.]+ s$", start=mark, timeout=WAIT)
        resource.prlimit(d.pid, resource.RLIMIT_NOFILE, original)
        lowered = False
        new_pid = int(d.wait_for_log(SERVING_RE.format(index), start=mark,
                                     timeout=WAIT).group(1))
        assert new_pid not in workers
        assert worker_pids(d) == sorted([workers[1], new_pid])

        # The new worker answers on the port, bound to the live Manager.
        with Responder() as target:
            deadline = time.monotonic() + WAIT
            while True:
                with FramedClient(*d.address) as c:
                    pid = served_by(d, c, mark)
                    if pid == new_pid:
                        assert c.request("REGISTER", "neo", "neo-password").type == "ACK"
                        c.login("neo", "neo-password")
                        assert c.request("BIND", "127.0.0.1", str(target.port)).type == "ACK"
                        assert c.request("QUERY", "neo") == Message(
                            "RESULT", (), f"neo,127.0.0.1,{target.port}")
                        break
                assert time.monotonic() < deadline, "no connection reached the new worker"

        # No descriptor leaked by the failed attempts.  Sockets aside: the
        # supervisor's presence-hub client opens one connection per I/O thread
        # (at most 4) when it first uses that thread (drop_pid of the dead worker).
        after = open_fds(d.pid)
        k_before, k_after = kinds(before), kinds(after)
        assert k_after["socket"] <= k_before["socket"] + 4, (before, after)
        del k_before["socket"], k_after["socket"]
        assert k_after == k_before, (before, after)
        assert d.stop() == 0
        assert d.wait_group_gone(5) == []
        assert "Traceback" not in d.stderr()
    finally:
        if lowered:
            try:
                resource.prlimit(d.pid, resource.RLIMIT_NOFILE, original)
            except ProcessLookupError:
                pass
        d.kill_group()
