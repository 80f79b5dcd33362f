"""The liveness checker, end to end: registrations of peers that answer PING
(echoing the nonce, ``PONG 0`` or ``PONG 0 <username>``) stay; those that stop
answering, answer wrongly or vanish are removed."""

from __future__ import annotations

import threading
import time

import pytest

from support.client import FramedClient, Responder
from support.processes import run_directory

MODES = {"echo": "alive", "bare": "alive", "name": "alive",
         "silent": "dead", "wrong": "dead", "gone": "dead"}


def wait_until(predicate, timeout: float = 20.0, what: str = "condition"):
    """Poll a cheap, event-driven predicate (a socket round trip) until true."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.05)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_checker_removes_dead_keeps_alive(tmp_path, workers):
    names = list(MODES)
    with run_directory("--bind-policy", "any", "--check-interval", "0.3",
                       "--probe-timeout", "0.5", "--workers", workers,
                       data_dir=str(tmp_path)) as d:
        responders = {n: Responder("silent" if n == "gone" else n, name=n) for n in names}
        try:
            with FramedClient(*d.address) as c:
                for n in names:
                    assert c.request("REGISTER", n, "password-" + n).type == "ACK"
            for n in names:
                with FramedClient(*d.address) as c:
                    c.login(n, "password-" + n)
                    assert c.request("BIND", "127.0.0.1",
                                     str(responders[n].port)).type == "ACK"
            responders["gone"].close()  # the peer exits after its BIND
            with FramedClient(*d.address) as q:
                q.login("echo", "password-echo")

                def listed():
                    return {line.split(",")[0] for line in q.request("QUERY").text.split("\n")
                            if line}

                alive = {n for n, v in MODES.items() if v == "alive"}
                wait_until(lambda: listed() == alive, what="dead peers removed")
                # Alive peers keep being probed and stay registered.
                seen = responders["echo"].pings
                wait_until(lambda: responders["echo"].pings >= seen + 2, what="more rounds")
                assert listed() == alive
            assert responders["silent"].pings >= 1  # it was probed, not skipped
            log = d.stderr()
            assert "removed silent" in log and "no PONG within 0.5 s" in log
            assert "removed wrong" in log and "wrong token" in log
            assert "removed gone" in log
            # One checker per directory: every round is logged by the same process.
            rounds = [line for line in log.splitlines() if "liveness round" in line]
            assert rounds and {line.split()[2] for line in rounds} == {str(d.pid)}
        finally:
            for r in responders.values():
                r.close()
