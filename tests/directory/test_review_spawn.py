"""Review regressions for the directory's spawn-failure handling and its
rate-limited outage log (see the docstring of each test for the failure it
pins down)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import re
import signal
import socket
import sys
import threading
import time

import redis

from directory.test_manager_death import kill_manager
from eurechat.directory.server import OutageLog
from eurechat.framing import Message
from support.client import FramedClient
from support.processes import children, start_directory, wait_pids_gone, worker_pids
from support.servers import RedisServer

LOGGER = "eurechat.directory.server"
UNAVAILABLE = Message("ERR", (), "directory unavailable, retry later")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def outage_lines(caplog) -> list:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def test_a_flapping_backend_is_not_a_log_flood(caplog):
    """A backend that fails every other request (PostgreSQL timing out under
    load, a pool of connections of which some are stale after a restart) used
    to write a WARNING and an INFO for *every* alternation: the flood the
    outage log exists to prevent.  Now: a couple of lines at once, then at
    most about one per interval, and the counts still add up."""
    clock = Clock()
    outage = OutageLog("login", interval=10.0, clock=clock)
    caplog.set_level(logging.INFO, logger=LOGGER)
    failures = 5_000
    for i in range(failures):           # 35 simulated seconds, failing every other time
        clock.now = 1000.0 + 35.0 * i / failures
        outage.failure("Authenticate for 10.0.0.1", ConnectionError("pool timeout"))
        outage.success()
    clock.now = 1050.0
    outage.flush()                      # what the timer does (no event loop here)
    lines = outage_lines(caplog)
    assert 2 <= len(lines) <= 2 + 5, lines
    assert lines[0][0] == "WARNING" and lines[-1][0] == "INFO", lines
    # Every failure is in exactly one line's count since the previous line,
    # and in exactly one outage's total (the recovery lines').
    assert sum(accounted(text) for _, text in lines) == failures, lines
    assert sum(int(re.search(r"; (\d+) failures during the outage", text)[1])
               for level, text in lines if level == "INFO") == failures, lines
    assert any("it worked again" in text for _, text in lines), lines


def accounted(text: str) -> int:
    """How many failures a line of the outage log reports as new."""
    for pattern in (r"\((\d+) failures so far", r"(\d+) failures since the last message",
                    r"\((\d+) since the last message\)"):
        m = re.search(pattern, text)
        if m:
            return int(m[1])
    assert ": backend unavailable: " in text, text
    return 1


def test_the_line_that_waits_for_its_turn_comes_without_another_request(caplog):
    """The recovery of a flapping backend is rationed: its line waits -- and
    is written by a timer when due, not only if some request happens to
    come along later (an outage whose end is never logged reads as an
    outage that never ended)."""
    caplog.set_level(logging.INFO, logger=LOGGER)

    clock = Clock()  # frozen while the requests come: however slow the machine

    async def main() -> None:
        outage = OutageLog("REGISTER", interval=0.05, clock=clock)
        for _ in range(3):  # three changes of state at once: the third waits
            outage.failure("Register for 10.0.0.2", ConnectionError("gone"))
            outage.success()
        assert [level for level, _ in outage_lines(caplog)] == ["WARNING", "INFO"]
        clock.now += 0.05   # its turn has come when the timer (real time) fires
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not any(r.levelname == "INFO" and "worked again" in r.getMessage()
                      for r in caplog.records):
            assert loop.time() < deadline, outage_lines(caplog)
            await asyncio.sleep(0.01)

    asyncio.run(main())
    lines = outage_lines(caplog)
    assert [level for level, _ in lines] == ["WARNING", "INFO", "INFO"], lines
    assert lines[-1][1].endswith("2 failures during the outage (2 since the last message); "
                                 "it worked again 1 times in between"), lines


def test_a_flapping_redis_through_the_cli_is_a_few_lines_that_count_everything(tmp_path):
    """Through the CLI: Redis refuses writes (``maxmemory`` reached), then
    takes them, 30 times over; every other BIND fails.  The log holds a few
    lines, not one WARNING and one INFO per alternation, and the recovery
    lines (the last one written at shutdown) count every failure."""
    rounds = 30
    with RedisServer() as redis_server:
        d = start_directory("--registry", redis_server.url, "--check-interval", "3600",
                            data_dir=str(tmp_path))
        admin = redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=10)
        target = socket.socket()
        try:
            target.bind(("127.0.0.1", 0))
            target.listen(1024)  # never accepted: room for every BIND probe
            port = str(target.getsockname()[1])
            with FramedClient(*d.address) as c:
                assert c.request("REGISTER", "ada", "ada-password").type == "ACK"
                c.login("ada", "ada-password")
                assert c.request("BIND", "127.0.0.1", port).type == "ACK"
                mark = len(d.err_lines)
                started = time.monotonic()
                for _ in range(rounds):
                    admin.config_set("maxmemory", "1")
                    assert c.request("BIND", "127.0.0.1", port) == UNAVAILABLE
                    admin.config_set("maxmemory", "0")
                    assert c.request("BIND", "127.0.0.1", port).type == "ACK"
                elapsed = time.monotonic() - started
            assert d.stop() == 0
            lines = [line for line in d.err_lines[mark:] if "BIND/LEAVE" in line]
            assert len(lines) <= 2 + 2 * (int(elapsed / 10) + 1) + 1, lines
            totals = [int(re.search(r" INFO: BIND/LEAVE: backend available again after "
                                    r"[\d.]+ s; (\d+) failures during the outage", line)[1])
                      for line in lines if " INFO: " in line]
            assert sum(totals) == rounds, lines
            assert " WARNING: Bind for 127.0.0.1: backend unavailable: " in lines[0], lines
        finally:
            admin.close()
            target.close()
            d.kill_group()


def test_sigterm_while_the_old_generation_is_retired_leaves_no_worker_behind(tmp_path):
    """SIGTERM arrives while a Manager replacement retires the old workers
    (they got SIGTERM; one does not exit -- stopped here, hung in real life).
    Cancelling the retirement used to forget that worker: the supervisor
    exited without waiting for it or SIGKILLing it, and it stayed for ever.
    Now the shutdown stops it like every other worker (SIGKILL after 3 s)."""
    d = start_directory("--workers", "2", "--check-interval", "3600", data_dir=str(tmp_path))
    stuck = None
    try:
        old = worker_pids(d.pid)
        assert len(old) == 2
        stuck, other = old
        os.kill(stuck, signal.SIGSTOP)  # will not act on the SIGTERM that retires it
        kill_manager(d)
        # The other old worker exits: the old generation is being retired, and
        # the stuck one is waited for (up to 3 s) -- shut down right now.
        assert wait_pids_gone([other], 30) == []
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(30) == 0
        # Nothing of the directory may outlive it (the stuck worker included).
        assert wait_pids_gone(d.group_alive(), 10) == []
    finally:
        if stuck is not None:
            try:
                os.kill(stuck, signal.SIGCONT)
            except ProcessLookupError:
                pass
        d.kill_group()


def test_a_process_started_but_not_watched_is_killed_not_lost(tmp_path, monkeypatch):
    """asyncio starts a worker's process and only then registers it with its
    child watcher (a thread per child before Python 3.12, a pidfd since).
    When that step fails -- no thread or descriptor to be had, the very
    conditions that make spawns fail -- ``create_subprocess_exec`` raises
    although the process runs: the supervisor took it for a failed start and
    the process went on unwatched (a worker the supervisor does not know, on
    the port; then a zombie), one more at each retry.

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
    """The supervisor read a new worker's ``ready`` on an executor thread.
    With no thread to be had (the conditions under which spawns fail), a
    worker that started fine was reported as "did not start" and left
    running, unaccounted for; its ``ready`` then hit a closed pipe (a
    traceback, a crash, a restart).  The pipe is now watched by the event
    loop: a real worker that starts is reported serving, threads or not."""
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
    """A worker process that does not report ``ready`` in time used to stay:
    the slot held a process that never served, and its watcher waited for
    it to exit -- for ever if it hung.  Now it is killed, so the watcher
    restarts the slot like any crashed worker."""
    from eurechat.directory import supervisor

    monkeypatch.setattr(supervisor, "READY_TIMEOUT", 0.5)

    async def body(sup, worker) -> None:
        sup._worker_argv = lambda ready_w: [sys.executable, "-c", "import time; time.sleep(120)"]
        assert await sup._spawn(worker, quiet=True) is False
        assert await asyncio.wait_for(worker.proc.wait(), 30) == -signal.SIGKILL

    in_supervisor(tmp_path, body)
