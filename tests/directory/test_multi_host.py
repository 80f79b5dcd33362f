"""Several ``eurechat-directory`` instances (different loopback ports standing in
for hosts) sharing one real Redis and one real PostgreSQL: one user base, one
presence, one liveness checker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Iterator, List, Tuple

import pytest
import redis

from eurechat.directory.interfaces import Registration
from eurechat.directory.presence.redis import RedisRegistry
from eurechat.framing import Message
from support.client import FramedClient, Responder
from support.processes import Directory, start_directory, test_env
from support.servers import free_port
from support.waits import PW, request_until, run


def start_host(redis_url: str, pg_dsn: str, *extra: str) -> Directory:
    return start_directory("--registry", redis_url, "--accounts", pg_dsn, *extra)


@pytest.fixture
def two_hosts(redis_url: str, pg_dsn: str) -> Iterator[Tuple[Directory, Directory]]:
    a = start_host(redis_url, pg_dsn, "--check-interval", "3600")
    try:
        b = start_host(redis_url, pg_dsn, "--check-interval", "3600")
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def seed(redis_url: str, regs: List[Registration]) -> None:
    """Put registrations in the shared store the way a directory does (same
    Lua script, same change feed)."""
    async def main() -> None:
        reg = RedisRegistry(redis_url)
        await reg.start()
        try:
            for r in regs:
                await reg.bind(r)
        finally:
            await reg.close()

    run(main())


def test_bind_through_one_host_is_seen_through_the_other(two_hosts) -> None:
    a, b = two_hosts
    with Responder() as alice_peer, FramedClient(*a.address) as ca, \
            FramedClient(*b.address) as cb:
        assert ca.request("REGISTER", "alice", PW) == Message("ACK", (), "account alice created")
        # The account is in PostgreSQL: the other host knows it at once.
        assert cb.request("REGISTER", "alice", "another-pass") == \
            Message("ERR", (), "account alice already exists")
        cb.login("alice", PW)
        ca.login("alice", PW)
        reply = ca.request("BIND", "127.0.0.1", str(alice_peer.port))
        assert reply == Message("ACK", (), f"bound successfully to 127.0.0.1:{alice_peer.port}")
        line = f"alice,127.0.0.1,{alice_peer.port}".encode()
        request_until(cb, ("QUERY", "alice"), lambda m: m.payload == line)
        assert cb.request("QUERY") == Message("RESULT", (), line)
        # LEAVE through the other host is seen through the first.
        assert cb.request("LEAVE") == Message("ACK", (), "deregistered from directory")
        request_until(ca, ("QUERY",), lambda m: m == Message("RESULT", (), b""))


def test_registrations_survive_every_directory(redis_url: str, pg_dsn: str) -> None:
    """Registrations outlive the sessions and the directory processes: they are
    in Redis.  A host started later serves them sorted."""
    seed(redis_url, [Registration("zoe", "127.0.0.1", 4001),
                     Registration("adam", "127.0.0.1", 4002)])
    with Responder() as peer:
        a = start_host(redis_url, pg_dsn, "--check-interval", "3600")
        try:
            with FramedClient(*a.address) as c:
                c.request("REGISTER", "mia", PW)
                c.login("mia", PW)
                assert c.request("BIND", "127.0.0.1", str(peer.port)).type == "ACK"
        finally:
            assert a.stop() == 0
        b = start_host(redis_url, pg_dsn, "--check-interval", "3600")
        try:
            with FramedClient(*b.address) as c:
                c.login("mia", PW)
                assert c.request("QUERY") == Message("RESULT", (), (
                    f"adam,127.0.0.1,4002\nmia,127.0.0.1,{peer.port}\nzoe,127.0.0.1,4001"))
        finally:
            b.stop()


def test_query_limit_marks_truncated_replies(redis_url: str, pg_dsn: str) -> None:
    regs = [Registration(f"user{i:02d}", "127.0.0.1", 3000 + i) for i in range(12)]
    seed(redis_url, regs[::-1])
    a = start_host(redis_url, pg_dsn, "--check-interval", "3600", "--query-limit", "5")
    try:
        with FramedClient(*a.address) as c:
            c.request("REGISTER", "reader", PW)
            c.login("reader", PW)
            first = "\n".join(r.line() for r in regs[:5]).encode()
            assert c.request("QUERY") == Message("RESULT", ("truncated",), first)
            # One name is never truncated; the session goes on.
            assert c.request("QUERY", "user11") == Message("RESULT", (), regs[11].line())
    finally:
        a.stop()


def test_login_throttle_is_shared_between_hosts(redis_url: str, pg_dsn: str) -> None:
    """Failures through one host count on the other (the counters are in Redis)."""
    a = start_host(redis_url, pg_dsn, "--throttle-limit", "3", "--check-interval", "3600")
    b = start_host(redis_url, pg_dsn, "--throttle-limit", "3", "--check-interval", "3600")
    try:
        with FramedClient(*a.address) as c:
            c.request("REGISTER", "victim", PW)
        for host in (a, b, a):
            with FramedClient(*host.address) as c:
                c.request("USER", "victim")
                assert c.request("PASS", "wrong-password") == \
                    Message("ERR", (), "authentication failed")
        with FramedClient(*b.address) as c:
            c.request("USER", "victim")
            assert c.request("PASS", PW) == \
                Message("ERR", (), "too many failed attempts, retry later")
    finally:
        a.stop()
        b.stop()


def _lease_holder_pid(redis_url: str) -> int:
    with redis.Redis.from_url(redis_url, decode_responses=True) as admin:
        holder = admin.get("eurechat:lease:checker")
    assert holder, "nobody holds the checker lease"
    return int(holder.split(":")[1])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_one_liveness_checker_across_hosts_and_takeover(redis_url: str, pg_dsn: str,
                                                        workers: str) -> None:
    """Two hosts, one checker (``--checker-shards 1``, the single lease that
    older versions use): only the lease holder probes.  SIGKILL it (its
    whole process group): the other host takes the lease over and probes from
    then on.  With --workers 2 the checker lives in each host's supervisor.
    (Sharded checkers: test_checker_shards.py.)"""
    opts = ("--check-interval", "0.2", "--lease", "2", "--workers", workers,
            "--checker-shards", "1")
    with Responder() as peer:
        seed(redis_url, [Registration("probed", "127.0.0.1", peer.port)])
        a = start_host(redis_url, pg_dsn, *opts)
        b = start_host(redis_url, pg_dsn, *opts)
        hosts = {a.pid: a, b.pid: b}
        try:
            # Wait for a few probes, then see who made them.
            for _ in range(3):
                peer.pinged.clear()
                assert peer.pinged.wait(15), "the checker never probed"
            leader_pid = _lease_holder_pid(redis_url)
            assert leader_pid in hosts
            leader = hosts.pop(leader_pid)
            (survivor,) = hosts.values()
            rounds = re.compile(r"liveness round \d+")
            assert rounds.search(leader.stderr())
            assert not rounds.search(survivor.stderr()), "two checkers ran"

            leader.kill_group()  # a crash: the lease is not released
            # The dead leader may have had one probe in flight: wait for two more.
            seen = peer.pings
            for _ in range(2):
                peer.pinged.clear()
                if peer.pings < seen + 2:
                    assert peer.pinged.wait(20), "nobody took over the checker"
            assert _lease_holder_pid(redis_url) == survivor.pid
            assert rounds.search(survivor.stderr())
        finally:
            a.stop()
            b.stop()


def test_account_commands_on_postgres(redis_url: str, pg_dsn: str, tmp_path) -> None:
    """useradd/users/userdel --accounts postgresql://... manage the accounts every
    host sees (the way to add users with --registration closed)."""
    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "eurechat.directory", *args,
                               "--accounts", pg_dsn, "--data-dir", str(tmp_path)],
                              input=stdin, capture_output=True, text=True, timeout=60,
                              env=test_env())

    assert cli("useradd", "olga", "--password-stdin", stdin=PW + "\n").returncode == 0
    assert cli("useradd", "olga", "--password-stdin", stdin=PW + "\n").returncode == 1
    assert cli("useradd", "ivan", "--password-stdin", stdin=PW + "\n").returncode == 0
    assert cli("users").stdout.split() == ["ivan", "olga"]
    a = start_host(redis_url, pg_dsn, "--registration", "closed", "--check-interval", "3600")
    try:
        with FramedClient(*a.address) as c:
            assert c.request("REGISTER", "mallory", PW) == \
                Message("ERR", (), "registration is closed")
            c.login("olga", PW)
    finally:
        a.stop()
    assert cli("userdel", "ivan").returncode == 0
    assert cli("users").stdout.split() == ["olga"]
    down = subprocess.run([sys.executable, "-m", "eurechat.directory", "users", "--accounts",
                           f"postgresql://postgres@127.0.0.1:{free_port()}/x"],
                          capture_output=True, text=True, timeout=60, env=test_env())
    assert down.returncode == 2
    assert "cannot reach PostgreSQL" in down.stderr


@pytest.mark.parametrize("which", ["redis", "postgres"])
def test_unreachable_at_start_is_one_line_and_exit_2(which: str, tmp_path) -> None:
    port = free_port()
    if which == "redis":
        args = ["--registry", f"redis://127.0.0.1:{port}/0"]
        expected = "cannot reach Redis"
    else:
        args = ["--accounts", f"postgresql://postgres@127.0.0.1:{port}/eurechat"]
        expected = "cannot reach PostgreSQL"
    res = subprocess.run([sys.executable, "-m", "eurechat.directory", "--port", "0",
                          "--data-dir", str(tmp_path), *args],
                         capture_output=True, text=True, timeout=60, env=test_env())
    assert res.returncode == 2
    assert "listening" not in res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert expected in lines[0]


def test_console_script_with_workers_and_unreachable_redis(tmp_path) -> None:
    """The installed ``eurechat-directory`` command, supervisor mode."""
    script = os.path.join(os.path.dirname(sys.executable), "eurechat-directory")
    res = subprocess.run([script, "--port", "0", "--workers", "2", "--data-dir", str(tmp_path),
                          "--registry", f"redis://127.0.0.1:{free_port()}/0"],
                         capture_output=True, text=True, timeout=60, env=test_env())
    assert res.returncode == 2, res.stderr
    assert "cannot reach Redis" in res.stderr
    assert "Traceback" not in res.stderr


def test_workers_and_unreachable_postgres_is_one_error_and_exit_2(tmp_path) -> None:
    """With --workers N the supervisor checks the account database itself
    instead of letting N workers fail one by one."""
    res = subprocess.run([sys.executable, "-m", "eurechat.directory", "--port", "0",
                          "--workers", "2", "--data-dir", str(tmp_path), "--accounts",
                          f"postgresql://postgres@127.0.0.1:{free_port()}/eurechat"],
                         capture_output=True, text=True, timeout=60, env=test_env())
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "cannot reach PostgreSQL" in errors[0], res.stderr
