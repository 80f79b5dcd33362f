"""The liveness checker: one per directory, removes registrations that stopped
answering.

Why here and not in the workers: with N workers, N checkers would probe every
peer N times.  The checker runs in the supervisor (or in the only process
with ``--workers 1``) and talks to the registry like any client: it reads a
``snapshot`` from the source of truth and removes with ``expected=`` so a
fresh BIND that raced with a probe is never dropped.

With several directory hosts sharing Redis, only one checker should run: it
asks an ``Election`` before every round.  ``LocalElection`` always leads.

A probe: TCP connect, ``PING 0 <nonce>``, then a ``PONG`` within the probe
timeout (5 s).  Accepted: ``PONG 0 <nonce>`` (eurechat peers), ``PONG 0``
and ``PONG 0 <username>`` (older peers).  Probes run concurrently, at most
``concurrency`` at a time, so 10,000 registrations take seconds.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import ssl
import time
from typing import List, Optional, Tuple

from ..errors import ProtocolError
from ..framing import Decoder, Message
from ..tls.contexts import listener_problem, probe_context
from . import metrics
from .election.base import Election
from .election.local import LocalElection
from .errors import BackendUnavailable
from .presence.base import Registration, Registry
from .tasks import stop_task

log = logging.getLogger("eurechat.directory.checker")

# Errors that say this process is short of resources, not that the peer is dead.
_LOCAL_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

__all__ = ["LivenessChecker", "probe_peer"]

#: Longest ``LivenessChecker.close()`` waits for a round to let go.
CLOSE_TIMEOUT = 2.0


async def probe_peer(reg: Registration, timeout: float) -> Optional[str]:
    """None when ``reg`` answered a PING correctly within ``timeout``, else why not."""
    nonce = os.urandom(8).hex()
    deadline = time.monotonic() + timeout
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            reg.address, reg.port,
            ssl=probe_context(bool(reg.fingerprint)) if reg.tls else None,
            server_hostname="" if reg.tls else None), timeout)
    except asyncio.TimeoutError:
        return f"no {'TLS' if reg.tls else 'TCP'} connection within {timeout:g} s"
    except ssl.SSLError as exc:
        return f"TLS handshake failed: {exc.reason or exc}"
    except OSError as exc:
        if exc.errno in _LOCAL_ERRORS:
            raise  # our problem, not the peer's: never a reason to remove it
        if reg.tls and not isinstance(exc, ConnectionRefusedError):
            return f"TLS handshake failed: {exc.strerror or type(exc).__name__}"
        return f"connect failed: {exc.strerror or exc}"
    try:
        if reg.tls and reg.fingerprint:
            why = listener_problem(writer.get_extra_info("ssl_object"), reg.name,
                                   reg.fingerprint)
            if why is not None:
                return why
        writer.write(bytes(Message("PING", (nonce,))))
        decoder = Decoder(max_payload=64 * 1024)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return f"no PONG within {timeout:g} s"
            try:
                data = await asyncio.wait_for(reader.read(65536), left)
            except asyncio.TimeoutError:
                return f"no PONG within {timeout:g} s"
            if not data:
                return "connection closed without PONG"
            try:
                items = decoder.feed(data)
            except ProtocolError as exc:
                return f"malformed reply: {exc}"
            for item in items:
                if isinstance(item, Message) and item.type == "PONG":
                    if item.args in ((), (nonce,), (reg.name,)):
                        return None
                    return f"PONG with wrong token {item.args!r}"
    except OSError as exc:
        return f"connection error: {exc.strerror or exc}"
    finally:
        writer.close()


class LivenessChecker:
    """Every ``interval`` seconds, probe each registration and remove the dead."""

    def __init__(self, registry: Registry, election: Optional[Election] = None,
                 interval: float = 30.0, probe_timeout: float = 5.0,
                 concurrency: int = 1000) -> None:
        self.registry = registry
        self.election = election or LocalElection()
        self.interval = interval
        self.probe_timeout = probe_timeout
        self.concurrency = concurrency
        self.rounds = 0
        self._task: Optional[asyncio.Task] = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """Stop the rounds.  One ``cancel()`` is not enough: on Python < 3.12
        ``asyncio.wait_for`` (which redis-py wraps around every command it
        sends) returns its result instead of raising when a cancellation
        lands just as the command completes, and the round then runs on --
        a directory on Redis ignored SIGTERM that way.  So the loop also
        checks a flag, and the cancellation is repeated until the task ends
        (bounded: shutdown never waits on the checker for long)."""
        self._closing = True
        task, self._task = self._task, None
        if task is None:
            return
        await stop_task(task, CLOSE_TIMEOUT)
        if not task.done():
            log.warning("liveness checker did not stop within %g s", CLOSE_TIMEOUT)

    async def _run(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.interval)
            if self._closing:
                return
            try:
                if await self.election.leading():
                    await self.check_round()
            except asyncio.CancelledError:
                raise
            except BackendUnavailable as exc:
                log.warning("liveness round skipped: registry unavailable: %s", exc)
            except Exception:
                log.exception("liveness round failed")

    async def check_round(self) -> Tuple[int, List[Registration]]:
        """One round; returns (probed, removed)."""
        started = time.monotonic()
        regs = await self.election.snapshot(self.registry)  # sharded leases: our shards only
        removed: List[Registration] = []
        failures: List[BaseException] = []

        async def one(reg: Registration) -> None:
            try:
                why = await probe_peer(reg, self.probe_timeout)
            except OSError as exc:
                log.warning("could not probe %s: %s (kept)", reg.name, exc)
                return
            metrics.probe(why is None)
            if why is not None and await self.registry.remove(reg.name, expected=reg):
                removed.append(reg)
                metrics.removal()
                log.info("removed %s (%s:%s): %s", reg.name, reg.address, reg.port, why)

        # At most ``concurrency`` tasks, each taking the next registration from
        # one shared iterator: a task per registration (gathered up front)
        # cost ~1.5 KB each while waiting, 1.5 GB at a million.  A failed
        # removal (registry lost mid-round) neither abandons the other probes
        # nor goes unreported: it is kept and raised after the whole round.
        pending = iter(regs)

        async def prober() -> None:
            for reg in pending:
                if self._closing:
                    return  # close() even if a cancellation got swallowed
                try:
                    await one(reg)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures.append(exc)

        await asyncio.gather(*(prober() for _ in range(min(self.concurrency, len(regs)))))
        if failures:
            raise failures[0]
        self.rounds += 1
        metrics.checker_round(time.monotonic() - started)
        log.info("liveness round %d: %d probed, %d removed in %.2f s", self.rounds,
                 len(regs), len(removed), time.monotonic() - started)
        return len(regs), removed
