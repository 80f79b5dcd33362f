"""A worker slot whose restart fails is restarted later, not lost for ever.

Real processes through the CLI.  The running supervisor's descriptor limit is
lowered (``prlimit``, Linux) so that starting a worker fails with EMFILE --
after the ready pipe was opened, the path that could leak it -- then a worker
is killed.  What must hold: an ERROR names the errno and says it will retry;
once the limit is back, the slot serves again (a new process, answering on
the port); the supervisor holds no more pipes or files than before.  Every
wait is on a log line or a reply, with a timeout.

Then the supervisor's own ``_spawn`` in this process, with a real worker
process: one that asyncio started but could not watch is killed, not left
running; the ready report is read without a thread; a worker that never
reports ready is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import errno
import os
import resource
import signal
import sys
import threading
import time

from eurechat.framing import Message
from support.client import FramedClient, Responder
from support.processes import (
    Directory,
    Process,
    children,
    directory_cmd,
    start_directory,
    test_env,
    worker_pids,
)

SERVING_RE = r"worker {} serving \(pid (\d+)\)"
WAIT = 30.0  # generous: the machine may be loaded; never reached when it works


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
        workers = worker_pids(d.pid)
        assert len(workers) == 2
        for pid in workers:  # stderr is read by its own thread: may lag behind stdout
            d.wait_for_log(rf"worker \d serving \(pid {pid}\)", timeout=WAIT)
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
        assert worker_pids(d.pid) == sorted([workers[1], new_pid])

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


def exec_size(argv: list, env: dict) -> int:
    """Bytes that execve() counts against its limit (Linux, fs/exec.c): the
    file name, every argument and ``KEY=VALUE`` string with its NUL, and one
    pointer per argument and environment string."""
    strings = sum(len(a.encode()) + 1 for a in argv)
    strings += sum(len(k.encode()) + len(v.encode()) + 2 for k, v in env.items())
    return len(argv[0].encode()) + 1 + strings + 8 * (len(argv) + len(env))


def test_no_worker_can_be_started_at_start_up_is_one_error_and_exit_1(tmp_path):
    """Start-up does not retry: when the first processes cannot be started,
    that is one ERROR and exit 1 (a service manager, or a human, takes it
    from there), nothing left behind.  How it is made to fail, for real:
    the supervisor's argument list and environment are padded to just below
    what execve() accepts; a worker's are larger (the supervisor adds
    ``--data-dir``, the Manager's address and key...), so every worker's
    exec fails with E2BIG."""
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    stack = stack if stack != resource.RLIM_INFINITY else 1 << 62
    limit = max(min(6 << 20, stack // 4), 128 << 10)   # execve's argument space
    data_dir = str(tmp_path / ("d" * 200))  # passed twice to a worker: a wide margin
    argv = [*directory_cmd(), "--port", "0", "--data-dir", data_dir, "--workers", "2",
            "--check-interval", "3600"]
    env = test_env()
    room = limit - exec_size(argv, env) - 150  # the supervisor itself fits
    assert room > 0
    i = 0
    while room > 0:  # one string may not exceed 128 KiB
        n = min(room - len(f"EURECHAT_TEST_PAD{i}=") - 1 - 8, 100_000)
        if n < 0:
            break
        env[f"EURECHAT_TEST_PAD{i}"] = "x" * n
        room -= len(f"EURECHAT_TEST_PAD{i}=") + n + 1 + 8
        i += 1
    assert 0 <= limit - exec_size(argv, env) <= 300
    p = Process(argv, env=env)
    try:
        assert p.wait(30) == 1
        p.wait_for_log(r"ERROR: cannot start: 2 of 2 worker processes could not be started "
                       r"\(E2BIG \(Argument list too long\)\); stopping \(exit 1\)$")
        assert p.lines == []  # never said it was listening
        assert p.wait_group_gone(5) == []
        p.kill_group()  # nothing left to kill: joins the readers (all of stderr is in)
        text = p.stderr()
        assert "Traceback" not in text and "will retry" not in text, text
        assert len([line for line in p.err_lines if " ERROR: " in line]) == 1, text
    finally:
        p.kill_group()


def test_a_process_started_but_not_watched_is_killed_not_lost(tmp_path, monkeypatch):
    """asyncio starts a worker's process and only then registers it with its
    child watcher (a thread per child before Python 3.12, a pidfd since).
    When that step fails -- no thread or descriptor to be had, the very
    conditions that make spawns fail -- ``create_subprocess_exec`` raises
    although the process runs.  Taken for a failed start alone, the process
    would go on unwatched (a worker the supervisor does not know, on the
    port; then a zombie), one more at each retry.

    The supervisor's real ``_spawn``, a real worker process; only the
    watcher's thread is made to fail (as root, no process or thread limit
    applies, and glibc reuses the stack of an exited thread, so an
    address-space limit cannot fail it alone).  What must hold: a failed
    start, and no process left behind."""
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if "waitpid-" in thread.name:  # asyncio's ThreadedChildWatcher
            raise RuntimeError("can't start new thread")
        real_start(thread)

    def no_pidfd(pid: int, flags: int = 0) -> int:  # 3.12+: use the threaded watcher
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    async def body(sup, worker) -> None:
        with monkeypatch.context() as patch:
            patch.setattr(threading.Thread, "start", start)
            patch.setattr(os, "pidfd_open", no_pidfd, raising=False)
            assert await sup._spawn(worker, quiet=True) is False
        assert worker.proc is None and isinstance(worker.spawn_error, RuntimeError), \
            repr(worker.spawn_error)
        assert worker.replaced.is_set() and worker.failures == 1

    left = in_supervisor(tmp_path, body)
    assert left == set()  # killed and reaped, not left running


def in_supervisor(tmp_path, body) -> set:
    """Run ``body(sup, worker)`` on a fresh event loop with a real
    ``Supervisor`` ready to ``_spawn`` its one worker slot (a real socket
    and parent pipe).  Returns the child processes the body left behind
    (killed afterwards, whatever happened)."""
    from eurechat.directory.supervisor import REUSEPORT, Supervisor, _listen

    opts = argparse.Namespace(workers=1, registry="memory", data_dir=str(tmp_path))
    sup = Supervisor(opts, ["--check-interval", "3600"])
    before = set(children(os.getpid(), zombies=True))

    async def main() -> None:
        worker = sup.workers[0]
        worker.lock, worker.replaced = asyncio.Lock(), asyncio.Event()
        sup.sock = _listen("127.0.0.1", 0, REUSEPORT, listen=not REUSEPORT)
        sup.parent_r, sup.parent_w = os.pipe()
        try:
            await body(sup, worker)
        finally:
            sup.sock.close()
            os.close(sup.parent_r)
            os.close(sup.parent_w)

    try:
        asyncio.run(main())
        return set(children(os.getpid(), zombies=True)) - before
    finally:
        for pid in set(children(os.getpid(), zombies=True)) - before:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass  # reaped by the child watcher meanwhile


def test_the_ready_report_is_read_without_a_thread(tmp_path, monkeypatch):
    """A new worker's ``ready`` is read by the event loop, not on an
    executor thread: with no thread to be had (the conditions under which
    spawns fail), a worker that started fine would be reported as "did not
    start" and left running, unaccounted for, and its ``ready`` would hit a
    closed pipe (a traceback, a crash, a restart).  A real worker that
    starts is reported serving, threads or not."""
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if "waitpid-" not in thread.name:  # the child watcher's own thread may start
            raise RuntimeError("can't start new thread")
        real_start(thread)

    async def body(sup, worker) -> None:
        with monkeypatch.context() as patch:
            patch.setattr(threading.Thread, "start", start)
            assert await sup._spawn(worker, quiet=True) is True
        assert worker.serving and worker.proc.returncode is None
        worker.proc.kill()
        await worker.proc.wait()

    in_supervisor(tmp_path, body)


def test_a_process_that_never_says_ready_is_stopped(tmp_path, monkeypatch):
    """A worker process that does not report ``ready`` in time is killed:
    kept, the slot would hold a process that never serves, and its watcher
    would wait for it to exit -- for ever if it hung.  Killed, the slot is
    restarted by its watcher like any crashed worker."""
    from eurechat.directory import supervisor

    monkeypatch.setattr(supervisor, "READY_TIMEOUT", 0.5)

    async def body(sup, worker) -> None:
        sup._worker_argv = lambda ready_w: [sys.executable, "-c", "import time; time.sleep(120)"]
        assert await sup._spawn(worker, quiet=True) is False
        assert await asyncio.wait_for(worker.proc.wait(), 30) == -signal.SIGKILL

    in_supervisor(tmp_path, body)
