"""The presence Manager of ``--workers N`` dies (kill -9): the directory heals.

Real processes through the CLI, real sockets.  What must hold after the
Manager's death: one WARNING naming it; a new Manager and new workers; the
port accepting throughout (no connection refused); LOGIN/BIND/QUERY work on
the same port with presence consistent across workers; a real peer process
appears again without being restarted (it re-BINDs when its session drops).
A Manager that keeps dying is given up on (exit 1).  Every wait is on a log
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

import pytest

from eurechat.framing import Message
from support.client import FramedClient, Responder
from support.processes import Directory, start_directory, start_process, test_env, worker_pids

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
