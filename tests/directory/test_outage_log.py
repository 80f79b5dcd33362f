"""A backend outage is logged once, then summarised -- not once per request.

``OutageLog`` on its own (a clock passed in: simulated seconds, no waiting),
then end to end through the real CLI: the directory's Redis is killed, a
burst of BINDs fails, Redis comes back, and the log holds a bounded number of
lines that still carry the exact count of failures.
"""

from __future__ import annotations

import logging
import re
import socket
import time

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
