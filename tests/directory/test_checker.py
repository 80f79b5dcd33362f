"""The liveness checker, end to end: registrations of peers that answer PING
(echoing the nonce, ``PONG 0`` or ``PONG 0 <username>``) stay; those that stop
answering, answer wrongly or vanish are removed.  Then a round in-process:
its concurrency is bounded, failures are reported after everyone was probed,
the checker and its leases stop even when Redis swallows a cancel, an entry
with an impossible port is skipped."""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import subprocess
import sys

import pytest

from eurechat.directory.checker import LivenessChecker
from eurechat.directory.election.lease import RedisLease, ShardedLease
from eurechat.directory.interfaces import Registration, RegistryUnavailable
from eurechat.directory.presence.base import bucket_of
from eurechat.directory.presence.memory import MemoryRegistry
from eurechat.directory.presence.redis import RedisRegistry
from support.client import FramedClient, Responder
from support.processes import run_directory, start_directory, test_env
from support.waits import run

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
from eurechat.directory.presence.memory import MemoryRegistry
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


DEAD, ALIVE, CONCURRENCY = 1500, 20, 8


def test_a_round_runs_at_most_concurrency_tasks_and_probes_everyone():
    async def main() -> None:
        with socket.socket() as held, Responder() as peer:
            held.bind(("127.0.0.1", 0))   # bound, never listening: refused
            dead_port = held.getsockname()[1]
            reg = MemoryRegistry()
            for i in range(DEAD):
                await reg.bind(Registration(f"d{i:05d}", "127.0.0.1", dead_port))
            for i in range(ALIVE):
                await reg.bind(Registration(f"a{i:05d}", "127.0.0.1", peer.port))
            checker = LivenessChecker(reg, interval=3600, probe_timeout=5,
                                      concurrency=CONCURRENCY)
            most = 0
            loop_tasks_before = len(asyncio.all_tasks())
            round_task = asyncio.ensure_future(checker.check_round())
            while not round_task.done():  # sample at every turn of the loop
                most = max(most, len(asyncio.all_tasks()) - loop_tasks_before)
                await asyncio.sleep(0)
            probed, removed = round_task.result()
            assert probed == DEAD + ALIVE
            assert len(removed) == DEAD
            assert sorted(r.name for r in reg.query()) == [f"a{i:05d}" for i in range(ALIVE)]
            assert peer.pings == ALIVE
            # The round itself, its probing tasks (and the odd helper task of a
            # connection): never one task per registration.
            assert most <= 2 * CONCURRENCY + 2, most

    asyncio.run(asyncio.wait_for(main(), 60))


class FlakyRegistry(MemoryRegistry):
    """Every other removal fails as if the shared backend had gone away."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def remove(self, name, expected=None):
        self.calls += 1
        if self.calls % 2:
            raise RegistryUnavailable("backend away")
        return await super().remove(name, expected)


def test_failures_are_reported_after_every_registration_was_probed():
    async def main() -> None:
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            reg = FlakyRegistry()
            for i in range(40):
                await reg.bind(Registration(f"d{i:03d}", "127.0.0.1", held.getsockname()[1]))
            checker = LivenessChecker(reg, concurrency=4)
            try:
                await checker.check_round()
            except RegistryUnavailable:
                pass
            else:
                raise AssertionError("a failed removal must fail the round")
            assert reg.calls == 40             # nobody skipped after the first failure
            assert len(reg.query()) == 20      # the removals that worked, worked

    asyncio.run(asyncio.wait_for(main(), 60))


TRIALS = 40


async def stops(close, task: asyncio.Task) -> bool:
    """Whether ``close()`` returns and ``task`` is over within 5 s.  If not,
    ``task`` is put down by hand (cancelled again and again), so that a
    failure is reported instead of hanging the test."""
    closing = asyncio.ensure_future(close())
    await asyncio.wait({closing}, timeout=5.0)
    ok = closing.done() and task.done()
    for _ in range(200):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)
    await asyncio.wait({closing}, timeout=5.0)
    return ok


def test_checker_and_leases_stop_even_when_redis_swallows_a_cancel(redis_url: str) -> None:
    """Each trial starts a checker (rounds back to back), lets it run a random
    few milliseconds and stops it: ``close()`` must return and the round task
    be over, every time.  Same for both kinds of lease ticking every 2 ms."""
    rng = random.Random(7)

    async def main() -> None:
        reg = RedisRegistry(redis_url, follow=False)
        await reg.start()
        with Responder() as a, Responder() as b:
            await reg.bind(Registration("ann", "127.0.0.1", a.port))
            await reg.bind(Registration("ben", "127.0.0.1", b.port))
            sharded = ShardedLease(redis_url, shards=16, lease=1.0)
            await sharded.start()
            try:
                for election in (sharded, RedisLease(redis_url, lease=1.0)):
                    if isinstance(election, RedisLease):
                        await election.start()
                    for _ in range(TRIALS // 2):
                        checker = LivenessChecker(reg, election, 0.0001, 1.0, 100)
                        checker.start()
                        task = checker._task
                        assert task is not None
                        await asyncio.sleep(rng.uniform(0.005, 0.05))  # a random moment
                        assert await stops(checker.close, task), "the checker ran on"
                    if isinstance(election, RedisLease):
                        await asyncio.wait_for(election.close(), 5.0)
                for _ in range(TRIALS):
                    lease = RedisLease(redis_url, lease=0.02)  # a tick every 2 ms
                    await lease.start()
                    task = lease._task
                    assert task is not None
                    await asyncio.sleep(rng.uniform(0.002, 0.03))
                    assert await stops(lease.close, task), "the lease kept ticking"
            finally:
                await sharded.close()
                await reg.close()

    run(main(), timeout=120)


def test_directory_on_redis_exits_on_sigterm_mid_round(redis_url: str) -> None:
    """Through the CLI: a one-worker directory on Redis whose checker runs
    rounds back to back gets SIGTERM in the middle of them: exit 0, promptly
    (SPEC: within 5 s), every time."""
    with Responder() as peer:
        async def seed() -> None:
            reg = RedisRegistry(redis_url, follow=False)
            await reg.start()
            try:
                await reg.bind(Registration("pat", "127.0.0.1", peer.port))
            finally:
                await reg.close()

        run(seed())
        for shards in ("16", "1", "16"):
            d = start_directory("--registry", redis_url, "--checker-shards", shards,
                                "--lease", "1", "--check-interval", "0.001")
            try:
                d.wait_for_log(r"liveness round 5:")
                d.send_signal(signal.SIGTERM)
                assert d.wait(8) == 0, d.stderr()  # TimeoutExpired: it ignored SIGTERM
                assert "Traceback" not in d.stderr()
            finally:
                d.kill_group()


def test_an_entry_with_an_impossible_port_is_ignored_not_a_failed_round(redis_url: str) -> None:
    """A presence entry no directory could have written (port 70000, from a
    foreign writer or a hand edit) must not reach the probe, whose
    ``open_connection`` would raise OverflowError and fail every round with
    a traceback.  It is a malformed entry like any other: ignored (logged),
    and the round goes on."""
    async def main() -> None:
        reg = RedisRegistry(redis_url, follow=False)
        await reg.start()
        try:
            with Responder() as peer:
                await reg.bind(Registration("fine", "127.0.0.1", peer.port))
                await reg.bind(Registration("odd", "127.0.0.1", 7000))
                admin = reg._redis
                assert admin is not None
                await admin.hset("eurechat:presence", "odd", "127.0.0.1,70000")
                await admin.hset(f"eurechat:presence:b:{bucket_of('odd')}", "odd",
                                 "127.0.0.1,70000")
                assert [r.name for r in await reg.snapshot()] == ["fine"]
                lease = ShardedLease(redis_url, shards=4, lease=1.0)
                await lease.start()
                try:
                    assert await lease.wait_for(lambda held: len(held) == 4, 10)
                    checker = LivenessChecker(reg, lease, 3600, 1.0, 10)
                    probed, removed = await checker.check_round()
                    assert (probed, removed) == (1, [])
                finally:
                    await lease.close()
        finally:
            await reg.close()

    run(main())
