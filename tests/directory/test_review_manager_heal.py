"""Review findings on the presence Manager's healing (``--workers N``).

A new-generation worker that dies while it starts (the Manager is fine) must
be restarted like any crashed worker, and the old generation must still go:
no old worker bound to the dead Manager (whose BINDs all fail) may stay for
ever.

The replacement Manager itself dies while its workers are starting (a second
kill -9 right after the first, an OOM killer picking the new process): the
new workers cannot reach it and fail.  The old workers must not be stopped
then -- they were stopping once every new worker had *tried*, so for about
two seconds nothing listened on the port and clients were refused.  They keep
the port until a generation bound to a live Manager serves.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

from directory.test_manager_death import (
    MANAGER_RE,
    ConnectProbe,
    account,
    kill_manager,
)
from eurechat.framing import Message
from support.client import ConnectionClosed, Responder
from support.processes import start_directory, wait_pids_gone, worker_pids


def wait_exited(pids, timeout: float = 10.0) -> set:
    """Wait (on pidfds: an event) until each of ``pids`` has exited; returns
    those still running at the timeout."""
    return set(wait_pids_gone(pids, timeout))


def test_replacement_manager_killed_while_its_workers_start(tmp_path):
    d = start_directory("--workers", "2", data_dir=str(tmp_path))
    probe = ConnectProbe(d.address)
    try:
        first = kill_manager(d)
        warned = d.wait_for_log(rf"WARNING: presence manager \(pid {first}\)")
        after = d.err_lines.index(warned.string)
        probe.start()
        # The second Manager, killed as soon as it is announced: its workers
        # (started next, ~0.5 s each) find it gone.
        second = int(d.wait_for_log(MANAGER_RE, start=after).group(1))
        os.kill(second, signal.SIGKILL)
        again = d.wait_for_log(rf"WARNING: presence manager \(pid {second}\) was killed",
                               start=after)
        third = int(d.wait_for_log(MANAGER_RE, start=d.err_lines.index(again.string)).group(1))
        healed = d.wait_for_log(rf"presence manager replaced in [\d.]+ s: new manager pid "
                                rf"{third}, (\d+) of (\d+) workers serving", start=after)
        probe.stop()
        # Never a moment without a listener, not even through a double fault.
        assert probe.attempts > 0 and probe.refused == 0, (probe.attempts, probe.refused,
                                                          d.stderr())
        assert healed.group(1) == healed.group(2) == "2"
        assert len(worker_pids(d.pid)) == 2  # the stand-ins were retired at the end
        with Responder() as target, account(d, "dora", "dora-password") as c:
            assert c.request("BIND", "127.0.0.1", str(target.port)).type == "ACK"
            assert c.request("QUERY", "dora") == Message(
                "RESULT", (), f"dora,127.0.0.1,{target.port}")
        assert d.stop() == 0
        assert d.wait_group_gone(5) == []
        assert "Traceback" not in d.stderr()
    finally:
        probe.stop()
        d.kill_group()


def test_new_worker_dying_at_start_is_restarted_and_the_old_ones_go(tmp_path):
    d = start_directory("--workers", "2", data_dir=str(tmp_path))
    try:
        old = set(worker_pids(d.pid))
        manager = kill_manager(d)
        warned = d.wait_for_log(rf"WARNING: presence manager \(pid {manager}\)")
        after = d.err_lines.index(warned.string)
        # SIGKILL the first new worker process as soon as it exists (before it
        # can say "ready": a start takes ~0.3 s; bounded look-out).
        victim = 0
        deadline = time.monotonic() + 10
        while not victim and time.monotonic() < deadline:
            fresh = set(worker_pids(d.pid)) - old
            if fresh:
                victim = min(fresh)
                os.kill(victim, signal.SIGKILL)
        assert victim
        d.wait_for_log(r"presence manager replaced in", start=after)
        # Both old workers are stopped (each logs its shutdown) and every slot
        # serves on the new Manager in the end.
        for pid in old:
            d.wait_for_log(rf" {pid} eurechat\.directory\.app INFO: shutting down",
                           start=after)
        assert wait_exited(old) == set()
        # Two workers serving in the end, neither an old one nor the victim (if
        # the kill came just after it said "ready", its restart may still be
        # on its way: wait for that line too).
        serving: dict = {}
        index = after
        while len({pid for pid in serving.values() if pid != victim}) < 2:
            m = d.wait_for_log(r"worker (\d) serving \(pid (\d+)\)", start=index)
            index = d.err_lines.index(m.string) + 1
            serving[m.group(1)] = int(m.group(2))
        assert set(serving.values()) == set(worker_pids(d.pid))
        with Responder() as target:
            for i in range(6):  # fresh connections spread over both workers: all BIND
                with account(d, f"eve{i}", "eve-password") as c:
                    assert c.request("BIND", "127.0.0.1", str(target.port)).type == "ACK"
        assert d.stop() == 0
        assert d.wait_group_gone(5) == []
        assert "Traceback" not in d.stderr()
    finally:
        d.kill_group()


class BindLoop(threading.Thread):
    """One client that logs in, BINDs and QUERYs again and again (bounded),
    recording every reply; reconnects when its session is closed."""

    def __init__(self, d, name: str, port: int) -> None:
        super().__init__(daemon=True)
        self.d, self.name, self.port = d, name, port
        self.done = threading.Event()
        self.bound_after = threading.Event()   # an ACKed BIND once `armed` was set
        self.talking = threading.Event()       # a first reply came: a session is up
        self.armed = threading.Event()
        self.replies: Counter = Counter()
        self.errors: list = []

    def run(self) -> None:
        for _ in range(500):
            if self.done.is_set():
                return
            try:
                with account(self.d, self.name, self.name + "-password") as c:
                    # One session for as long as it lasts: a session that is on
                    # an old worker when the Manager dies stays there until
                    # that worker retires and cuts it (moving on after a few
                    # dozen requests made that a matter of luck).
                    for _ in range(100_000):
                        if self.done.is_set():
                            return
                        armed = self.armed.is_set()
                        bind = c.request("BIND", "127.0.0.1", str(self.port))
                        query = c.request("QUERY", self.name)
                        self.replies[(bind.type, bind.text[:21])] += 1
                        self.replies[(query.type,)] += 1
                        self.talking.set()
                        if armed and bind.type == "ACK":
                            self.bound_after.set()
            except ConnectionClosed:
                self.replies["closed"] += 1      # an old worker retired: reconnect
            except OSError as exc:               # a reset from a retiring worker's queue
                self.replies[type(exc).__name__] += 1
            except Exception as exc:             # anything else is a finding
                self.errors.append(repr(exc))
                return


def test_bind_and_query_in_flight_through_a_healing(tmp_path):
    """Clients BIND and QUERY without pause while the Manager is killed: each
    request gets ACK/RESULT, or ``ERR directory unavailable`` on an old worker
    (the session stays), or its session is closed by a retiring worker -- no
    hang, no other error; after the healing each client BINDs again and every
    worker sees all of them."""
    d = start_directory("--workers", "2", data_dir=str(tmp_path))
    loops = []
    try:
        with Responder() as target:
            loops = [BindLoop(d, f"fly{i}", target.port) for i in range(4)]
            for loop in loops:
                loop.start()
            # Every client has a session on an old worker before the kill
            # (on a loaded machine a thread could otherwise connect only
            # after the healing, to a new worker, and nothing would cut it).
            for loop in loops:
                assert loop.talking.wait(20), (loop.name, loop.replies, loop.errors)
            mark = len(d.err_lines)
            kill_manager(d)
            d.wait_for_log(r"presence manager replaced in .* 2 of 2 workers serving",
                           start=mark)
            for loop in loops:
                loop.armed.set()
            for loop in loops:
                assert loop.bound_after.wait(20), (loop.name, loop.replies, loop.errors)
                loop.done.set()
            for loop in loops:
                loop.join(20)
            for loop in loops:
                assert loop.errors == [], loop.errors
                unexpected = {k for k in loop.replies if k not in (
                    ("ACK", "bound successfully to"), ("ERR", "directory unavailable"),
                    ("RESULT",), "closed", "ConnectionResetError", "BrokenPipeError")}
                assert not unexpected, loop.replies
            # The healing really cut through sessions in use (a retiring
            # worker closes them; one caught mid-request may see a reset).
            cuts = ("closed", "ConnectionResetError", "BrokenPipeError")
            assert sum(loop.replies[k] for loop in loops for k in cuts) >= 1, \
                [loop.replies for loop in loops]
            names = sorted(loop.name for loop in loops)
            for _ in range(8):  # fresh connections: both workers answer alike
                with account(d, "judge", "judge-password") as c:
                    listed = sorted(line.split(",")[0] for line in
                                    c.request("QUERY").text.split("\n"))
                assert listed == names
        assert d.stop() == 0
        assert "Traceback" not in d.stderr()
    finally:
        for loop in loops:
            loop.done.set()
        d.kill_group()
