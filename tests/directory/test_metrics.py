"""``eurechat-directory --metrics``: scraped over real HTTP while real
sessions drive the directory through its CLI, the counters move by exactly
what was done -- with one process, across four workers, and after a worker
was killed (what it counted stays counted; the restart is counted).

Per-request counts reach the metrics within ``metrics.FLUSH_INTERVAL``
(1 s), so each check waits (bounded) until the scrape shows the expected
values, then requires exact equality of every metric it knows.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Dict, FrozenSet, List, Tuple

import pytest

from eurechat.framing import Message, encode
from support.client import FramedClient, Responder
from support.processes import directory_cmd, start_directory, test_env, worker_pids
from support.servers import RedisServer

METRICS_RE = re.compile(r"^eurechat-directory metrics on (?P<url>http://\S+)$")
P = "eurechat_directory_"
Key = Tuple[str, FrozenSet[Tuple[str, str]]]


def scrape(url: str) -> Dict[Key, float]:
    """Every sample of one scrape: (name, labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples: Dict[Key, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, labels = head.partition("{")
        pairs = re.findall(r'(\w+)="([^"]*)"', labels)
        samples[(name, frozenset(pairs))] = float(value)
    return samples


def key(name: str, **labels: str) -> Key:
    return (P + name, frozenset(labels.items()))


def wait_for(url: str, expected: Dict[Key, float], timeout: float = 15.0) -> Dict[Key, float]:
    """Scrape until every expected sample has its value (the per-request
    counts are flushed every second); fail with the differences otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        got = scrape(url)
        wrong = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
        if not wrong:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("metrics differ (got, expected): " + "\n".join(
                f"{k[0]}{dict(k[1])}: {g} != {v}" for k, (g, v) in sorted(wrong.items())))
        time.sleep(0.1)  # between two scrapes: a poll of the condition, bounded above


class Tally:
    """What the test did, as the metrics should count it."""

    def __init__(self) -> None:
        self.requests: Dict[str, int] = {}
        self.replies: Dict[str, int] = {}
        self.logins: Dict[str, int] = {}
        self.binds = 0
        self.accounts = 0
        self.bytes_in = 0    # received by the directory
        self.bytes_out = 0   # sent by it

    def expected(self, **gauges: float) -> Dict[Key, float]:
        out = {key("requests_total", type=t): float(self.requests.get(t, 0))
               for t in ("USER", "LOGIN", "PASS", "REGISTER", "BIND", "LEAVE", "QUERY",
                         "PING", "other", "oversized", "malformed")}
        out.update({key("replies_total", kind=k): float(self.replies.get(k, 0))
                    for k in ("ACK", "RESULT", "ERR", "PONG")})
        out.update({key("logins_total", outcome=o): float(self.logins.get(o, 0))
                    for o in ("ok", "failed", "throttled", "certificate", "unavailable")})
        out[key("binds_total", outcome="ok")] = float(self.binds)
        out[key("accounts_created_total", outcome="ok")] = float(self.accounts)
        out[key("received_bytes_total")] = float(self.bytes_in)
        out[key("sent_bytes_total")] = float(self.bytes_out)
        for name, value in gauges.items():
            state, _, transport = name.partition("_")
            out[key("sessions", state=state, transport=transport)] = float(value)
        return out


class Client(FramedClient):
    """A framed client that adds what it sends and receives to a ``Tally``."""

    def __init__(self, tally: Tally, host: str, port: int) -> None:
        super().__init__(host, port)
        self.tally = tally

    def request(self, type_: str, *args: str, payload=b"", timeout=None) -> Message:
        t = self.tally
        t.requests[type_] = t.requests.get(type_, 0) + 1
        t.bytes_in += len(encode(type_, args, payload))
        reply = super().request(type_, *args, payload=payload, timeout=timeout)
        t.replies[reply.type] = t.replies.get(reply.type, 0) + 1
        t.bytes_out += len(bytes(reply))
        return reply

    def login(self, user: str, password: str) -> None:
        super().login(user, password)
        self.tally.logins["ok"] = self.tally.logins.get("ok", 0) + 1


def sessions(d, tally: Tally, responder: Responder, name: str, users: int) -> List[Client]:
    """REGISTER, log in, BIND, QUERY, PING, a failed login, and ``users``
    more sessions that log in and QUERY; returns the sessions left open."""
    password = f"{name}-password"
    open_: List[Client] = []
    c = Client(tally, d.host, d.port)
    assert c.request("REGISTER", name, password) == Message("ACK", (), f"account {name} created")
    tally.accounts += 1
    c.login(name, password)
    assert c.request("BIND", "127.0.0.1", str(responder.port)).type == "ACK"
    tally.binds += 1
    assert c.request("QUERY", name).type == "RESULT"
    assert c.request("PING", "x") == Message("PONG", ("x",))
    open_.append(c)
    with Client(tally, d.host, d.port) as bad:
        bad.request("USER", name)
        assert bad.request("PASS", "not-the-password") == Message(
            "ERR", (), "authentication failed")
        tally.logins["failed"] = tally.logins.get("failed", 0) + 1
        bad.read_until_closed()
    for _ in range(users):
        c = Client(tally, d.host, d.port)
        c.login(name, password)
        assert c.request("QUERY", name).type == "RESULT"
        open_.append(c)
    return open_


def odd_requests(d, tally: Tally) -> None:
    """An oversized request, a type the protocol does not have, a frame that
    does not parse: each counted under its own label, and its ERR."""
    with Client(tally, d.host, d.port) as c:
        reply = c.request("REGISTER", "carol", payload="x" * 5000)  # > 4096 before login
        assert reply.type == "ERR" and "too large" in reply.payload.decode(), reply
        tally.requests["REGISTER"] -= 1
        tally.requests["oversized"] = tally.requests.get("oversized", 0) + 1
        assert c.request("FOO").type == "ERR"
        tally.requests["other"] = tally.requests.get("other", 0) + tally.requests.pop("FOO")
        c.read_until_closed()
    with Client(tally, d.host, d.port) as c:
        c.send_raw(b"not a frame\n")
        tally.bytes_in += len(b"not a frame\n")
        reply = c.recv()
        assert reply.type == "ERR" and "malformed" in reply.payload.decode(), reply
        tally.requests["malformed"] = tally.requests.get("malformed", 0) + 1
        tally.replies["ERR"] += 1
        tally.bytes_out += len(bytes(reply))
        c.read_until_closed()


def metrics_url(d) -> str:
    return d.wait_for_line(METRICS_RE, timeout=10)["url"]


def test_one_process_counts_exactly_what_was_done(tmp_path):
    d = start_directory("--metrics", "127.0.0.1:0", "--check-interval", "3600",
                        data_dir=str(tmp_path))
    responder = Responder()
    try:
        url = metrics_url(d)
        tally = Tally()
        wait_for(url, tally.expected(new_plaintext=0, ready_plaintext=0))
        idle = FramedClient(d.host, d.port)  # a session in state new that says no more:
        idle.send_raw(b"P")  # its first byte made it a plaintext session
        tally.bytes_in += 1
        open_ = sessions(d, tally, responder, "alice", users=2)
        odd_requests(d, tally)
        got = wait_for(url, tally.expected(new_plaintext=1, auth_plaintext=0,
                                           ready_plaintext=3, ready_tls=0))
        assert got[key("registrations")] == 1.0
        assert got[key("worker_restarts_total")] == 0.0
        for c in open_:
            c.close()
        idle.close()
        wait_for(url, tally.expected(new_plaintext=0, ready_plaintext=0))
    finally:
        responder.close()
        assert d.stop() == 0


def serving_worker(client: FramedClient, workers: List[int]) -> int:
    """The worker process holding the server side of ``client``'s connection
    (from /proc: the socket's inode, then whose descriptor it is)."""
    local = client.sock.getsockname()
    peer = client.sock.getpeername()
    want_local = f"{_hex_ip(peer[0])}:{peer[1]:04X}"
    want_remote = f"{_hex_ip(local[0])}:{local[1]:04X}"
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == want_local and fields[2] == want_remote:
                inode = fields[9]
    assert inode, "server side of the connection not found in /proc/net/tcp"
    for pid in workers:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no worker holds socket {inode}")


def _hex_ip(ip: str) -> str:
    return "".join(f"{int(part):02X}" for part in reversed(ip.split(".")))


def test_four_workers_report_as_one_directory_and_a_killed_worker_keeps_its_counts(tmp_path):
    d = start_directory("--workers", "4", "--metrics", "127.0.0.1:0",
                        "--check-interval", "3600", data_dir=str(tmp_path), timeout=60)
    responder = Responder()
    try:
        url = metrics_url(d)
        tally = Tally()
        open_ = sessions(d, tally, responder, "alice", users=11)
        got = wait_for(url, tally.expected(new_plaintext=0, auth_plaintext=0,
                                           ready_plaintext=12))
        assert got[key("registrations")] == 1.0
        workers = worker_pids(d.pid)
        assert len(workers) == 4
        by_worker: Dict[int, List[Client]] = {}
        for c in open_:
            by_worker.setdefault(serving_worker(c, workers), []).append(c)
        assert len(by_worker) > 1, "every session on one worker: nothing spread"

        # SIGKILL the worker with the most sessions: what it counted stays.
        victim = max(by_worker, key=lambda pid: len(by_worker[pid]))
        mark = len(d.err_lines)
        os.kill(victim, signal.SIGKILL)
        d.wait_for_log(r"worker \d+ serving", start=mark, timeout=30)
        killed = by_worker.pop(victim)
        for c in killed:
            c.read_until_closed()
        alive = [c for cs in by_worker.values() for c in cs]
        got = wait_for(url, tally.expected(ready_plaintext=len(alive)))
        assert got[key("worker_restarts_total")] == 1.0
        assert got[key("registrations")] == 1.0

        # The restarted set goes on counting from there.
        for c in alive:
            assert c.request("PING", "again") == Message("PONG", ("again",))
        more = sessions(d, tally, responder, "bob", users=3)
        got = wait_for(url, tally.expected(ready_plaintext=len(alive) + len(more)))
        assert got[key("registrations")] == 2.0
        for c in alive + more:
            c.close()
    finally:
        responder.close()
        assert d.stop() == 0


def test_without_prometheus_client_metrics_is_one_line_and_exit_2(tmp_path):
    code = ("import sys; sys.modules['prometheus_client'] = None; "
            "from eurechat.directory.cli import main; sys.exit(main(sys.argv[1:]))")
    res = subprocess.run([sys.executable, "-c", code, "--port", "0", "--data-dir",
                          str(tmp_path), "--metrics", "127.0.0.1:0"],
                         capture_output=True, text=True, env=test_env(), timeout=60)
    assert res.returncode == 2, res
    assert res.stderr.splitlines() == [
        "eurechat-directory: --metrics needs prometheus_client: "
        "pip install 'eurechat[metrics]'"], res.stderr
    assert res.stdout == ""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_port_taken_is_one_line_and_exit_2(tmp_path, workers):
    with Responder() as busy:  # something already listens there
        res = subprocess.run(
            directory_cmd() + ["--port", "0", "--data-dir", str(tmp_path), "--workers",
                               workers, "--metrics", f"127.0.0.1:{busy.port}"],
            capture_output=True, text=True, env=test_env(), timeout=60)
    assert res.returncode == 2, res
    assert "cannot serve metrics on 127.0.0.1:" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert "listening on" not in res.stdout


def test_metrics_address_must_be_host_port(tmp_path):
    res = subprocess.run(directory_cmd() + ["--data-dir", str(tmp_path), "--metrics", "9100"],
                         capture_output=True, text=True, env=test_env(), timeout=60)
    assert res.returncode == 2
    assert "--metrics: expected HOST:PORT" in res.stderr, res.stderr


def test_checker_rounds_probes_and_removals(tmp_path):
    d = start_directory("--metrics", "127.0.0.1:0", "--check-interval", "0.2",
                        "--probe-timeout", "1", data_dir=str(tmp_path))
    responder = Responder()
    try:
        url = metrics_url(d)
        tally = Tally()
        open_ = sessions(d, tally, responder, "alice", users=0)
        wait_for(url, {key("checker_probes_total", result="ok"): 1.0}, timeout=30)
        mark = len(d.err_lines)
        responder.close()  # alice's address stops answering: removed at the next probe
        d.wait_for_log(r"removed alice", start=mark, timeout=30)
        got = wait_for(url, {key("checker_removals_total"): 1.0,
                             key("checker_probes_total", result="failed"): 1.0,
                             key("registrations"): 0.0})
        rounds = got[key("checker_rounds_total")]
        assert rounds >= 2
        assert got[key("checker_round_duration_seconds_count")] == rounds
        assert got[key("checker_round_duration_seconds_bucket", le="+Inf")] == rounds
        # Every round but the one that removed it found alice answering (the
        # rounds after the removal probe nobody).
        assert 1 <= got[key("checker_probes_total", result="ok")] <= rounds - 1
        for c in open_:
            c.close()
    finally:
        responder.close()
        assert d.stop() == 0


def test_manager_heal_is_counted_and_is_not_a_worker_restart(tmp_path):
    d = start_directory("--workers", "2", "--metrics", "127.0.0.1:0",
                        "--check-interval", "3600", data_dir=str(tmp_path), timeout=60)
    try:
        url = metrics_url(d)
        wait_for(url, {key("manager_heals_total"): 0.0})
        manager = int(d.wait_for_log(r"presence manager started \(pid (\d+)\)").group(1))
        mark = len(d.err_lines)
        os.kill(manager, signal.SIGKILL)
        d.wait_for_log(r"presence manager replaced in", start=mark, timeout=60)
        wait_for(url, {key("manager_heals_total"): 1.0, key("worker_restarts_total"): 0.0,
                       key("registrations"): 0.0})
    finally:
        assert d.stop() == 0


def test_backend_outage_is_counted_with_its_duration(tmp_path):
    redis = RedisServer().start()
    d = start_directory("--metrics", "127.0.0.1:0", "--registry", redis.url,
                        "--check-interval", "3600", data_dir=str(tmp_path))
    responder = Responder()
    try:
        url = metrics_url(d)
        tally = Tally()
        with Client(tally, d.host, d.port) as c:
            c.request("REGISTER", "alice", "alice-password")
            tally.accounts += 1
            c.login("alice", "alice-password")
            bind = ("BIND", "127.0.0.1", str(responder.port))
            assert c.request(*bind).type == "ACK"
            tally.binds += 1
            redis.kill()
            assert c.request(*bind) == Message("ERR", (), "directory unavailable, retry later")
            failed = 1
            got = wait_for(url, {key("backend_outages_total", backend="presence"): 1.0,
                                 key("binds_total", outcome="unavailable"): 1.0})
            assert got[key("backend_outage_duration_seconds_count", backend="presence")] == 0
            mark = len(d.err_lines)
            redis.start()
            while True:  # until the registry has reconnected
                reply = c.request(*bind)
                if reply.type == "ACK":
                    break
                assert reply == Message("ERR", (), "directory unavailable, retry later")
                failed += 1
                assert failed < 200, "redis did not come back"
            tally.binds += 1
            d.wait_for_log(r"BIND/LEAVE: backend available again", start=mark, timeout=30)
            expected = tally.expected(ready_plaintext=1)
            expected.update({key("backend_outages_total", backend="presence"): 1.0,
                             key("binds_total", outcome="unavailable"): float(failed),
                             key("backend_outage_duration_seconds_count",
                                 backend="presence"): 1.0,
                             key("registrations"): 1.0})
            got = wait_for(url, expected)
            assert got[key("backend_outage_duration_seconds_sum", backend="presence")] > 0
    finally:
        responder.close()
        assert d.stop() == 0
        redis.close()
