"""The liveness checker, end to end: registrations of peers that answer PING
(echoing the nonce, ``PONG 0`` or ``PONG 0 <username>``) stay; those that stop
answering, answer wrongly or vanish are removed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.client import FramedClient, Responder
from support.processes import run_directory, test_env

MODES = {"echo": "alive", "bare": "alive", "name": "alive",
         "silent": "dead", "wrong": "dead", "gone": "dead"}


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
            # The removals are logged with their reason: wait for those events.
            d.wait_for_log(r"removed silent \(127\.0\.0\.1:\d+\): no PONG within 0\.5 s")
            d.wait_for_log(r"removed wrong \(.*\): PONG with wrong token")
            d.wait_for_log(r"removed gone \(.*\): connect failed")
            # Two more complete rounds: the alive peers are still registered.
            mark = len(d.err_lines)
            d.wait_for_log(r"liveness round \d+: 3 probed, 0 removed", start=mark)
            mark = len(d.err_lines)
            d.wait_for_log(r"liveness round \d+: 3 probed, 0 removed", start=mark)
            with FramedClient(*d.address) as q:
                q.login("echo", "password-echo")
                listed = {line.split(",")[0] for line in q.request("QUERY").text.split("\n")}
                assert listed == {n for n, v in MODES.items() if v == "alive"}
            assert responders["silent"].pings >= 1 and responders["echo"].pings >= 3
            # One checker per directory: every round is logged by the same process.
            rounds = [line for line in d.stderr().splitlines() if "liveness round" in line]
            assert rounds and {line.split()[2] for line in rounds} == {str(d.pid)}
        finally:
            for r in responders.values():
                r.close()


CHECK_SCRIPT = r"""
import asyncio, resource, sys
from eurechat.directory.checker import LivenessChecker
from eurechat.directory.interfaces import Registration
from eurechat.directory.registry import MemoryRegistry
resource.setrlimit(resource.RLIMIT_NOFILE, (48, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

async def main():
    reg = MemoryRegistry()
    for i in range(200):
        await reg.bind(Registration(f"p{i:03d}", "127.0.0.1", int(sys.argv[1])))
    probed, removed = await LivenessChecker(reg, concurrency=200).check_round()
    print(probed, len(removed), len(reg.query()))

asyncio.run(main())
"""


def test_checker_out_of_descriptors_removes_nobody():
    """Probing 200 peers at once with 48 descriptors: the probes that cannot
    even open a socket say nothing about the peer, so nobody is removed."""
    with Responder("echo") as peer:
        out = subprocess.run([sys.executable, "-c", CHECK_SCRIPT, str(peer.port)],
                             capture_output=True, text=True, timeout=60, env=test_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["200", "0", "200"]
    assert "could not probe" in out.stderr  # the limit was really hit
