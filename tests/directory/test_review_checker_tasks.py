"""Review finding: a liveness round created one asyncio task per registration
up front (``gather`` over all of them, each then waiting for the semaphore),
so the checker's memory grew with the registrations, not with
``--probe-concurrency``: ~1.5 GB of peak RSS for the tasks alone at a million
registrations (measured: 148 MiB per 100,000 waiting tasks).  A round now
runs at most ``concurrency`` probing tasks, which take the registrations one
after another; every registration is still probed and every failure still
reported after the whole round.

Real sockets: the registrations point at a loopback port held bound but not
listening (refused at once, so each is removed) and at a live responder."""

from __future__ import annotations

import asyncio
import socket

from eurechat.directory.checker import LivenessChecker
from eurechat.directory.interfaces import Registration, RegistryUnavailable
from eurechat.directory.registry import MemoryRegistry
from support.client import Responder

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
