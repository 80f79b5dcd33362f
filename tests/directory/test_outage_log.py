"""A backend outage is logged once, then summarised -- not once per request.

``OutageLog`` on its own (a clock passed in: simulated seconds, no waiting),
then end to end through the real CLI: the directory's Redis is killed, a
burst of BINDs fails, Redis comes back, and the log holds a bounded number of
lines that still carry the exact count of failures.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time

import redis

from eurechat.directory.server import OutageLog
from eurechat.framing import Message
from support.client import FramedClient
from support.processes import start_directory
from support.servers import RedisServer

UNAVAILABLE = Message("ERR", (), "directory unavailable, retry later")
LOGGER = "eurechat.directory.server"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_failures_is_a_bounded_number_of_lines_with_the_count(caplog):
    clock = Clock()
    outage = OutageLog("BIND/LEAVE", interval=10.0, clock=clock)
    caplog.set_level(logging.INFO, logger=LOGGER)
    failures = 10_000
    for i in range(failures):          # 35 simulated seconds of failures
        clock.now = 1000.0 + 35.0 * i / failures
        outage.failure(f"Bind for 10.0.0.{i % 250}", ConnectionError("Redis unreachable"))
    clock.now = 1040.0
    outage.success()
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    # The first failure, one summary per 10 s (at 10, 20, 30 s), the recovery.
    assert [level for level, _ in lines] == ["WARNING"] * 4 + ["INFO"], lines
    first = lines[0][1]
    assert first.startswith("Bind for 10.0.0.0: backend unavailable: Redis unreachable")
    assert "logged at most every 10 s" in first
    counted = 1
    for _, text in lines[1:4]:
        m = re.match(r"BIND/LEAVE: backend still unavailable: (\d+) failures since the last "
                     r"message \((\d+) since the outage began (\d+) s ago\); last: Bind for "
                     r"10\.0\.0\.\d+: Redis unreachable$", text)
        assert m, text
        counted += int(m[1])
        assert int(m[2]) == counted
    m = re.match(r"BIND/LEAVE: backend available again after 40\.0 s; (\d+) failures during "
                 r"the outage \((\d+) since the last message\)$", lines[4][1])
    assert m, lines[4][1]
    assert int(m[1]) == failures and counted + int(m[2]) == failures

    # A new outage starts with a WARNING of its own; a working backend logs nothing.
    caplog.clear()
    outage.success()
    outage.failure("Leave for 10.0.0.1", ConnectionError("gone"))
    outage.failure("Leave for 10.0.0.1", ConnectionError("gone"))  # same instant: counted only
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    outage.success()  # a third change of state within a moment: its line waits (rationed)
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    clock.now += 10.0
    outage.flush()    # what the timer does when the line is due
    assert caplog.records[-1].getMessage().endswith("2 failures during the outage "
                                                   "(1 since the last message)")


def test_redis_outage_under_a_burst_of_binds_is_a_few_lines(tmp_path):
    """Through the CLI: 200 BINDs fail while Redis is down; the directory logs
    one WARNING (plus at most one summary per 10 s) and, when a BIND works
    again, an INFO that counts all 200."""
    burst = 200
    with RedisServer() as redis_server:
        d = start_directory("--registry", redis_server.url, "--check-interval", "3600",
                            data_dir=str(tmp_path))
        target = socket.socket()
        try:
            # A BIND target: the kernel completes the probes' handshakes (backlog).
            target.bind(("127.0.0.1", 0))
            target.listen(1024)
            port = str(target.getsockname()[1])
            with FramedClient(*d.address) as c:
                assert c.request("REGISTER", "ada", "ada-password").type == "ACK"
                c.login("ada", "ada-password")  # the throttle is in Redis too: log in first
                assert c.request("BIND", "127.0.0.1", port).type == "ACK"
                mark = len(d.err_lines)
                redis_server.kill()
                started = time.monotonic()
                c.send_raw(f"BIND 0 127.0.0.1 {port}\n".encode() * burst)
                replies = [c.recv(timeout=30) for _ in range(burst)]
                assert replies == [UNAVAILABLE] * burst
                assert c.request("PING", "still") == Message("PONG", ("still",))

                redis_server.start()  # same port: the directory reconnects by itself
                deadline = time.monotonic() + 30
                retried = 0  # BINDs that failed while Redis restarted: counted too
                while True:
                    reply = c.request("BIND", "127.0.0.1", port)
                    if reply.type == "ACK":
                        break
                    assert reply == UNAVAILABLE and time.monotonic() < deadline, reply
                    retried += 1
                elapsed = time.monotonic() - started
            back = d.wait_for_log(r"INFO: BIND/LEAVE: backend available again after [\d.]+ s; "
                                  r"(\d+) failures during the outage", start=mark)
            assert int(back[1]) == burst + retried
            lines = [line for line in d.err_lines[mark:] if "backend unavailable" in line
                     or "backend still unavailable" in line]
            assert len(lines) <= 1 + int(elapsed / 10) + 1, lines
            assert " WARNING: Bind for 127.0.0.1: backend unavailable: " in lines[0]
            assert d.stop() == 0
        finally:
            target.close()
            d.kill_group()


def outage_lines(caplog) -> list:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def test_a_flapping_backend_is_not_a_log_flood(caplog):
    """A backend that fails every other request (PostgreSQL timing out under
    load, a pool of connections of which some are stale after a restart)
    must not write a WARNING and an INFO for *every* alternation: that is the
    flood the outage log exists to prevent.  A couple of lines at once, then
    at most about one per interval, and the counts still add up."""
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
