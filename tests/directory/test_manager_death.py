"""The presence Manager of ``--workers N`` dies (kill -9): the directory heals.

Real processes through the CLI, real sockets.  What must hold after the
Manager's death: one WARNING naming it; a new Manager and new workers; the
port accepting throughout (no connection refused); LOGIN/BIND/QUERY work on
the same port with presence consistent across workers; a real peer process
appears again without being restarted (it re-BINDs when its session drops).
A Manager that keeps dying is given up on (exit 1); a Manager killed while
its workers start, a new worker dying at start, requests in flight and a
SIGTERM during a healing are all survived.  Every wait is on a log
line, a reply or a process exit, with a timeout.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from eurechat.framing import Message
from support.client import ConnectionClosed, FramedClient, Responder
from support.processes import (
    Directory,
    start_directory,
    start_process,
    test_env,
    wait_pids_gone,
    worker_pids,
)

MANAGER_RE = r"presence manager started \(pid (\d+)\)"
REPLACED_RE = r"presence manager replaced in [\d.]+ s: new manager pid (\d+), (\d+) of (\d+)"
PEER_PASSWORD = "peer-password-1"


def kill_manager(d: Directory, pid: int = 0) -> int:
    """kill -9 the Manager ``pid`` (default: the first one, named by the
    supervisor's log); returns its pid."""
    pid = pid or int(d.wait_for_log(MANAGER_RE).group(1))
    assert pid in d.group_alive()
    os.kill(pid, signal.SIGKILL)
    return pid


def account(d: Directory, name: str, password: str) -> FramedClient:
    """A logged-in session (the account is created over the wire)."""
    c = FramedClient(*d.address)
    reply = c.request("REGISTER", name, password)
    assert reply.type in ("ACK", "ERR"), reply
    c.login(name, password)
    return c


class ConnectProbe(threading.Thread):
    """Connects to the port again and again until stopped (bounded), counting
    refusals: with the port held open throughout there must be none."""

    def __init__(self, address) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.done = threading.Event()
        self.attempts = self.refused = 0

    def run(self) -> None:
        while not self.done.is_set() and self.attempts < 2000:
            self.attempts += 1
            try:
                socket.create_connection(self.address, timeout=5).close()
            except ConnectionRefusedError:
                self.refused += 1
            except OSError:
                pass  # a reset from a retiring worker's queue is not a closed port
            self.done.wait(0.005)  # pacing, not synchronisation

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def start_peer(d: Directory, name: str, data_dir: str):
    env = test_env(EURECHAT_PASSWORD=PEER_PASSWORD, EURECHAT_DIRECTORY_RETRY_BASE="0.05",
                   EURECHAT_DIRECTORY_RETRY_MAX="0.3")
    return start_process(
        [sys.executable, "-m", "eurechat.peer", "--user", name, "--register", "--json",
         "--directory", d.hostport, "--data-dir", data_dir, "--log-level", "INFO"],
        ready=r'"event": "ready"', env=env, stdin=subprocess.PIPE, timeout=30)


def test_manager_death_heals_presence_and_a_real_peer_binds_again(tmp_path):
    d = start_directory("--workers", "2", "--log-level", "debug",
                        data_dir=str(tmp_path / "dir"))
    peer = None
    try:
        with Responder() as target:
            peer = start_peer(d, "pia", str(tmp_path / "pia"))
            anna = account(d, "anna", "anna-password")
            assert anna.request("BIND", "127.0.0.1", str(target.port)).type == "ACK"
            listed = anna.request("QUERY").payload.decode()
            assert "anna," in listed and "pia,127.0.0.1," in listed
            old_workers = worker_pids(d.pid)
            assert len(old_workers) == 2

            probe = ConnectProbe(d.address)
            mark, peer_mark = len(d.err_lines), len(peer.err_lines)
            probe.start()
            try:
                manager = kill_manager(d)
                warning = d.wait_for_log(
                    rf"WARNING: presence manager \(pid {manager}\) was killed by SIGKILL: "
                    r"registrations lost; starting a new one", start=mark)
                replaced = d.wait_for_log(REPLACED_RE, start=mark)
            finally:
                probe.stop()
            # The port accepted throughout: never a moment without a listener.
            assert probe.attempts > 0 and probe.refused == 0, (probe.attempts, probe.refused)
            assert replaced.group(2) == replaced.group(3) == "2"
            # Exactly one WARNING from the directory says what happened.
            warnings = [line for line in d.err_lines[mark:] if " WARNING: " in line]
            assert warnings == [warning.string], warnings
            new_manager = int(replaced.group(1))
            alive = d.group_alive()
            assert manager not in alive and new_manager in alive
            new_workers = worker_pids(d.pid)
            assert len(new_workers) == 2 and not set(new_workers) & set(old_workers)
            # The old workers were stopped: their sessions closed (peers reconnect).
            assert anna.read_until_closed() == []
            anna.close()

            # The real peer, never restarted, logged in and BOUND again.
            peer.wait_for_log("directory session re-established", start=peer_mark)
            assert peer.proc.poll() is None
            # anna's registration lived in the dead Manager and nobody re-BOUND it.
            with account(d, "anna", "anna-password") as again:
                assert again.request("QUERY", "anna") == Message("RESULT")
                assert again.request("BIND", "127.0.0.1", str(target.port)).type == "ACK"
            # Fresh connections, until both new workers have answered: each sees
            # the new BIND and the peer's re-BIND (read-your-writes across workers).
            served = set()
            for _ in range(64):
                with account(d, "bob", "bob-password") as c:
                    port = c.sock.getsockname()[1]
                    result = c.request("QUERY")
                    pid = int(d.wait_for_log(
                        rf" (\d+) eurechat\.directory\.server DEBUG: connection from "
                        rf"127\.0\.0\.1:{port}$", start=mark).group(1))
                names = [line.split(",")[0] for line in result.payload.decode().split("\n")]
                assert result.type == "RESULT" and names == ["anna", "pia"], result
                assert pid in new_workers
                served.add(pid)
                if served == set(new_workers):
                    break
            assert served == set(new_workers)
        assert d.stop() == 0  # SIGTERM after a healing: still exit 0...
        assert d.wait_group_gone(5) == []  # ...and nothing left behind
        assert "Traceback" not in d.stderr(), d.stderr()
    finally:
        if peer is not None:
            peer.stop()
        d.kill_group()


@pytest.mark.parametrize("restarts", [0, 1])
def test_a_manager_that_keeps_dying_is_given_up(tmp_path, restarts):
    """``--manager-restarts K``: K deaths within the window are healed, the
    next one stops the directory with exit 1 and an ERROR (a service manager
    takes over), leaving no process behind."""
    d = start_directory("--workers", "2", "--manager-restarts", str(restarts),
                        data_dir=str(tmp_path))
    try:
        manager = 0
        for _ in range(restarts):
            mark = len(d.err_lines)
            manager = kill_manager(d, manager)
            d.wait_for_log(rf"WARNING: presence manager \(pid {manager}\) was killed",
                           start=mark)
            manager = int(d.wait_for_log(REPLACED_RE, start=mark).group(1))
        manager = kill_manager(d, manager)
        assert d.wait(10) == 1
        assert d.wait_group_gone(5) == []
        d.wait_for_log(rf"ERROR: presence manager \(pid {manager}\) was killed by SIGKILL: "
                       rf"registrations lost; {restarts + 1} deaths within 300 s "
                       rf"\(--manager-restarts {restarts}\): giving up")
        assert "Traceback" not in d.stderr(), d.stderr()
    finally:
        d.kill_group()


def test_kill_9_of_the_supervisor_after_a_healing_leaves_no_orphans(tmp_path):
    """The replacement Manager (spawned, with its resource tracker) dies with
    the supervisor like the first one did."""
    d = start_directory("--workers", "2", data_dir=str(tmp_path))
    try:
        kill_manager(d)
        d.wait_for_log(REPLACED_RE)
        assert len(d.group_alive()) >= 4  # supervisor, new Manager, 2 workers
        os.kill(d.pid, signal.SIGKILL)
        d.wait(5)
        assert d.wait_group_gone(10) == []
    finally:
        d.kill_group()


def test_console_script_heals_too(tmp_path):
    """The Manager replacement is spawned, which re-imports the main module:
    also through the installed ``eurechat-directory`` script."""
    script = shutil.which("eurechat-directory", path=os.path.dirname(sys.executable))
    assert script, "console script eurechat-directory not installed next to the interpreter"
    d = start_directory("--workers", "2", data_dir=str(tmp_path), cmd=[script])
    try:
        kill_manager(d)
        d.wait_for_log(REPLACED_RE)
        with Responder() as target, account(d, "cleo", "cleo-password") as c:
            assert c.request("BIND", "127.0.0.1", str(target.port)).type == "ACK"
            assert c.request("QUERY") == Message(
                "RESULT", (), f"cleo,127.0.0.1,{target.port}")
        assert d.stop() == 0
        assert "Traceback" not in d.stderr(), d.stderr()
    finally:
        d.kill_group()


@pytest.mark.parametrize("sig,when", [(signal.SIGTERM, "warned"), (signal.SIGINT, "started")])
def test_signal_in_the_middle_of_a_healing_exits_zero_without_orphans(tmp_path, sig, when):
    """SIGTERM/SIGINT to the whole process group (a service manager, a
    terminal's Ctrl-C) while the new Manager ("warned": probably being
    started) or the new workers ("started": being spawned) are on their way:
    the half-built generation is stopped with the rest, exit 0."""
    d = start_directory("--workers", "2", data_dir=str(tmp_path))
    try:
        manager = kill_manager(d)
        warned = d.wait_for_log(rf"WARNING: presence manager \(pid {manager}\)")
        if when == "started":
            d.wait_for_log(MANAGER_RE, start=d.err_lines.index(warned.string))
        os.killpg(d.pid, sig)
        assert d.wait(10) == 0
        assert d.wait_group_gone(5) == []
        assert "Traceback" not in d.stderr(), d.stderr()
    finally:
        d.kill_group()


def test_sigterm_while_the_old_generation_is_retired_leaves_no_worker_behind(tmp_path):
    """SIGTERM arrives while a Manager replacement retires the old workers
    (they got SIGTERM; one does not exit -- stopped here, hung in real life).
    Cancelling the retirement must not forget that worker, or it would
    outlive the directory for ever: the shutdown stops it like every other
    worker (SIGKILL after 3 s)."""
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
