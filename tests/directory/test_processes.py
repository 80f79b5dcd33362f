"""Processes of the directory, end to end: --workers N, 1,000 concurrent
sessions, kill -9 of a worker, SIGTERM/SIGINT, the console script, account
commands, --help and --trace."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys

import pytest

from eurechat.framing import Decoder, Message, encode
from support.client import ConnectionClosed, FramedClient, Responder
from support.processes import (
    directory_cmd,
    run_directory,
    start_directory,
    test_env,
    useradd,
    worker_pids,
)

USERS = {f"user{i}": f"password-{i}" for i in range(10)}


@pytest.fixture(scope="module")
def users_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("workers-data"))
    env = test_env()
    for name, password in USERS.items():
        subprocess.run(directory_cmd() + ["useradd", name, "--password-stdin", "--data-dir",
                                          data_dir], input=f"{password}\n".encode(),
                       env=env, check=True, capture_output=True, timeout=60)
    return data_dir


class Gate:
    """Opens once ``n`` sessions are connected: all 1,000 are open at once."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.event = asyncio.Event()

    def arrived(self) -> None:
        self.n -= 1
        if self.n == 0:
            self.event.set()


async def _session(host, port, name, password, expected, gate: Gate, sem):
    async with sem:  # bounded connect burst
        reader, writer = await asyncio.open_connection(host, port)
    try:
        gate.arrived()
        await gate.event.wait()
        writer.write(encode("USER", [name]) + encode("PASS", [password])
                     + encode("QUERY", [name]) + encode("PING", [name]))
        decoder = Decoder()
        got = []
        while len(got) < 4:
            data = await reader.read(65536)
            if not data:
                break
            got.extend(decoder.feed(data))
        return got == [Message("ACK", (), f"hi {name}, authentication required"),
                       Message("ACK", (), "successfully authenticated"),
                       Message("RESULT", (), expected[name]), Message("PONG", (name,))]
    finally:
        writer.close()


def test_thousand_concurrent_sessions_across_four_workers(users_dir):
    with run_directory("--workers", "4", "--bind-policy", "any", "--log-level", "debug",
                       data_dir=users_dir) as d, Responder() as peer:
        assert len(worker_pids(d.pid)) == 4
        expected = {}
        for name, password in USERS.items():
            with FramedClient(*d.address) as c:
                c.login(name, password)
                assert c.request("BIND", "127.0.0.1", str(peer.port)).type == "ACK"
                expected[name] = f"{name},127.0.0.1,{peer.port}"

        async def main():
            gate = Gate(1000)
            sem = asyncio.Semaphore(200)
            names = list(USERS)
            sessions = [_session(d.host, d.port, names[i % 10], USERS[names[i % 10]],
                                 expected, gate, sem) for i in range(1000)]
            return await asyncio.wait_for(asyncio.gather(*sessions), 60)

        mark = len(d.err_lines)
        results = asyncio.run(main())
        assert results.count(True) == 1000
        # ...and they really were spread over the four workers.
        serving = {line.split()[2] for line in d.err_lines[mark:] if "connection from" in line}
        assert serving == {str(p) for p in worker_pids(d.pid)}


def test_kill_9_of_a_worker_loses_nothing(users_dir):
    with run_directory("--workers", "2", data_dir=users_dir) as d, Responder() as peer:
        with FramedClient(*d.address) as c:
            c.login("user1", USERS["user1"])
            assert c.request("BIND", "127.0.0.1", str(peer.port)).type == "ACK"
        before = worker_pids(d.pid)
        assert len(before) == 2
        sessions = [FramedClient(*d.address) for _ in range(20)]  # on both workers
        for c in sessions:
            c.login("user3", USERS["user3"])
        mark = len(d.err_lines)
        os.kill(before[0], signal.SIGKILL)
        d.wait_for_log(rf"worker \d \(pid {before[0]}\) exited with -9; restarting", start=mark)
        new_pid = int(d.wait_for_log(r"worker \d serving \(pid (\d+)\)", start=mark).group(1))
        assert new_pid not in before and sorted(worker_pids(d.pid)) == sorted(
            [before[1], new_pid])
        # Sessions of the surviving worker noticed nothing; those of the dead
        # one were disconnected (and would reconnect).
        survivors = 0
        for c in sessions:
            try:
                reply = c.request("PING", "alive")
            except (ConnectionClosed, OSError):
                continue
            finally:
                c.close()
            assert reply == Message("PONG", ("alive",))
            survivors += 1
        assert 0 < survivors < 20
        # New connections are served (by both workers) and the registration survived.
        for _ in range(8):
            with FramedClient(*d.address) as c:
                c.login("user2", USERS["user2"])
                assert c.request("QUERY") == Message(
                    "RESULT", (), f"user1,127.0.0.1,{peer.port}")


@pytest.mark.parametrize("workers,sig", [("1", signal.SIGTERM), ("1", signal.SIGINT),
                                         ("3", signal.SIGTERM), ("3", signal.SIGINT)])
def test_signal_exits_zero_without_orphans(users_dir, workers, sig):
    d = start_directory("--workers", workers, data_dir=users_dir)
    try:
        sessions = [FramedClient(*d.address) for _ in range(5)]
        sessions[0].login("user3", USERS["user3"])
        group = d.group_alive()
        assert len(group) >= (1 if workers == "1" else 2 + int(workers))
        d.send_signal(sig)
        assert d.wait(5) == 0
        assert d.wait_group_gone(5) == []
        for s in sessions:  # sessions were closed by the server
            assert s.read_until_closed() == []
            s.close()
    finally:
        d.kill_group()


def test_console_script(tmp_path):
    script = shutil.which("eurechat-directory", path=os.path.dirname(sys.executable))
    assert script, "console script eurechat-directory not installed next to the interpreter"
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--workers" in out.stdout
    useradd(str(tmp_path), "carol", "carol-password")
    d = start_directory(data_dir=str(tmp_path), cmd=[script])
    try:
        with FramedClient(*d.address) as c:
            c.login("carol", "carol-password")
    finally:
        assert d.stop() == 0


def test_account_commands(tmp_path):
    env = test_env()
    run = lambda *a, **kw: subprocess.run(  # noqa: E731
        directory_cmd() + list(a) + ["--data-dir", str(tmp_path)], capture_output=True,
        text=True, env=env, timeout=60, **kw)
    assert run("useradd", "zoe", "--password-stdin", input="zoe-password\n").returncode == 0
    dup = run("useradd", "zoe", "--password-stdin", input="zoe-password\n")
    assert dup.returncode == 1 and "already exists" in dup.stderr
    bad = run("useradd", ".zoe", "--password-stdin", input="zoe-password\n")
    assert bad.returncode == 2 and "invalid username" in bad.stderr
    short = run("useradd", "amy", "--password-stdin", input="short\n")
    assert short.returncode == 2 and "invalid password" in short.stderr
    assert run("useradd", "amy", "--password-stdin", input="amy-password\n").returncode == 0
    assert run("users").stdout.split() == ["amy", "zoe"]
    with run_directory(data_dir=str(tmp_path)) as d, FramedClient(*d.address) as c:
        c.login("zoe", "zoe-password")
        assert run("userdel", "zoe").returncode == 0  # while the server runs
        assert run("userdel", "zoe").returncode == 1
        with FramedClient(*d.address) as c2:
            c2.request("USER", "zoe")
            assert c2.request("PASS", "zoe-password") == Message(
                "ERR", (), "authentication failed")
    assert run("users").stdout.split() == ["amy"]


def test_help_explains_every_option():
    out = subprocess.run(directory_cmd() + ["--help"], capture_output=True, text=True,
                         timeout=30, env=test_env())
    assert out.returncode == 0
    for option in ("--host", "--port", "--workers", "--data-dir", "--registry", "--accounts",
                   "--registration", "--bind-policy", "--check-interval", "--max-payload",
                   "--max-connections", "--log-level", "--trace", "useradd", "userdel",
                   "users"):
        assert option in out.stdout, option
    assert "--worker-fd" not in out.stdout


def test_trace_logs_frames_with_password_masked(accounts_dir, passwords):
    with run_directory("--trace", data_dir=accounts_dir) as d:
        with FramedClient(*d.address) as c:
            c.login("bob", passwords["bob"])
            c.request("PING", "traced")
        d.wait_for_log("PONG 0 traced")
        log = d.stderr()
        assert "PING 0 traced" in log and "PASS 0 *****" in log
        assert passwords["bob"] not in log


def test_acked_bind_is_visible_on_every_worker_at_once(users_dir):
    """Read-your-writes across workers: after the ACK of a BIND or LEAVE on one
    connection, QUERY on any connection (any worker) sees it -- no waiting."""
    with run_directory("--workers", "3", data_dir=users_dir) as d, Responder() as peer:
        clients = [FramedClient(*d.address) for _ in range(9)]
        try:
            for c in clients:
                c.login("user4", USERS["user4"])
            expected = Message("RESULT", (), f"user4,127.0.0.1,{peer.port}")
            for i in range(12):
                writer = clients[i % len(clients)]
                assert writer.request("BIND", "127.0.0.1", str(peer.port)).type == "ACK"
                assert all(c.request("QUERY", "user4") == expected for c in clients)
                assert writer.request("LEAVE").type == "ACK"
                assert all(c.request("QUERY", "user4") == Message("RESULT") for c in clients)
        finally:
            for c in clients:
                c.close()


def test_kill_9_of_the_supervisor_leaves_no_orphans(users_dir):
    d = start_directory("--workers", "2", data_dir=users_dir)
    try:
        assert len(d.group_alive()) == 4  # supervisor, manager, 2 workers
        os.kill(d.pid, signal.SIGKILL)
        d.wait(5)
        assert d.wait_group_gone(10) == []  # workers and Manager follow the supervisor
    finally:
        d.kill_group()


def test_ctrl_c_to_the_whole_process_group(users_dir):
    """A terminal's Ctrl-C reaches every process of the group at once: the
    supervisor orders the shutdown, workers and Manager do not die half-way."""
    d = start_directory("--workers", "2", data_dir=users_dir)
    try:
        with FramedClient(*d.address) as c:
            c.login("user5", USERS["user5"])
            os.killpg(d.pid, signal.SIGINT)
            assert d.wait(5) == 0
            assert d.wait_group_gone(5) == []
            assert c.read_until_closed() == []
        assert "Traceback" not in d.stderr()
    finally:
        d.kill_group()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ipv6_loopback(tmp_path, workers):
    with run_directory("--host", "::1", "--workers", workers, data_dir=str(tmp_path)) as d, \
            FramedClient(d.host, d.port) as c:
        assert d.host == "::1"
        assert c.request("REGISTER", "v6user", "v6-password").type == "ACK"
        c.login("v6user", "v6-password")
        assert c.request("QUERY") == Message("RESULT")


def test_accounts_url_option(tmp_path):
    db = tmp_path / "elsewhere" / "accounts.sqlite3"
    with run_directory("--accounts", f"sqlite:///{db}", data_dir=str(tmp_path / "data")) as d, \
            FramedClient(*d.address) as c:
        assert c.request("REGISTER", "ursula", "ursula-password").type == "ACK"
        c.login("ursula", "ursula-password")
    assert db.exists() and not (tmp_path / "data" / "directory.sqlite3").exists()


def test_sigterm_to_the_whole_process_group(users_dir):
    """``kill -TERM -<pgid>`` (what a service manager does) reaches the Manager
    too: it leaves the shutdown to the supervisor, which exits 0 (not taking the
    Manager's death for a crash)."""
    d = start_directory("--workers", "2", data_dir=users_dir)
    try:
        with FramedClient(*d.address) as c:
            c.login("user6", USERS["user6"])
            os.killpg(d.pid, signal.SIGTERM)
            assert d.wait(5) == 0
            assert d.wait_group_gone(5) == []
            assert c.read_until_closed() == []
        assert "Traceback" not in d.stderr()
        assert "presence manager" not in d.stderr().split("shutting down", 1)[1]
    finally:
        d.kill_group()


def test_kill_9_of_the_presence_manager_is_healed(users_dir):
    """Presence lives in the Manager: when it dies, the directory does not go on
    refusing every BIND forever, nor exit; it says why, starts a new Manager and
    new workers, and BIND works again.  A service manager's group SIGTERM then
    still ends everything with exit 0.  (More in test_manager_death.py.)"""
    d = start_directory("--workers", "2", data_dir=users_dir)
    try:
        manager = int(d.wait_for_log(r"presence manager started \(pid (\d+)\)").group(1))
        assert manager in d.group_alive()
        os.kill(manager, signal.SIGKILL)
        d.wait_for_log(rf"WARNING: presence manager \(pid {manager}\) was killed by SIGKILL: "
                       r"registrations lost; starting a new one")
        new = int(d.wait_for_log(r"presence manager replaced in .*new manager pid (\d+), "
                                 r"2 of 2 workers serving").group(1))
        assert d.proc.poll() is None and new in d.group_alive()
        assert manager not in d.group_alive()
        with Responder() as peer, FramedClient(*d.address) as c:
            c.login("user7", USERS["user7"])
            assert c.request("BIND", "127.0.0.1", str(peer.port)).type == "ACK"
            assert c.request("QUERY", "user7") == Message(
                "RESULT", (), f"user7,127.0.0.1,{peer.port}")
        os.killpg(d.pid, signal.SIGTERM)
        assert d.wait(5) == 0
        assert d.wait_group_gone(5) == []
        assert "Traceback" not in d.stderr()
    finally:
        d.kill_group()


@pytest.mark.parametrize("where", ["XDG_DATA_HOME", "HOME"])
def test_no_options_uses_the_default_data_dir(tmp_path, where):
    """Works with no options on a fresh install: accounts go to
    ``$XDG_DATA_HOME/eurechat``, else ``~/.local/share/eurechat``; ``useradd``
    without ``--data-dir`` writes where the server reads."""
    from support.processes import READY_RE, start_process
    env = test_env()
    env.pop("XDG_DATA_HOME", None)
    if where == "XDG_DATA_HOME":
        env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
        expected = tmp_path / "xdg" / "eurechat"
    else:
        env["HOME"] = str(tmp_path / "home")
        expected = tmp_path / "home" / ".local" / "share" / "eurechat"
    added = subprocess.run(directory_cmd() + ["useradd", "dora", "--password-stdin"],
                           input="dora-password\n", capture_output=True, text=True,
                           env=env, timeout=60)
    assert added.returncode == 0, added.stderr
    assert (expected / "directory.sqlite3").exists()
    # --port 0 is the only option: the default 8888 may be taken on a test machine.
    d = start_process(directory_cmd() + ["--port", "0"], ready=READY_RE, env=env)
    try:
        port = int(d.wait_for_line(READY_RE)["port"])
        with FramedClient("127.0.0.1", port) as c:
            c.login("dora", "dora-password")
    finally:
        assert d.stop() == 0
