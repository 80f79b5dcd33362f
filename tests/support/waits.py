"""Waiting without sleeping: run a coroutine bounded in time, re-check a
condition on each event, repeat a request until its reply says what the test
waits for."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, Tuple, TypeVar

from eurechat.framing import Message
from support.client import FramedClient

T = TypeVar("T")

PW = "a-good-password"


def run(coro: Awaitable[T], timeout: float = 30.0) -> T:
    """Run one coroutine to completion on a fresh loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(check: Callable[[], bool], wait: Callable[[float], Awaitable[object]],
                timeout: float = 10.0, what: str = "condition") -> None:
    """Wait for ``check()`` to hold, re-checking each time ``wait`` reports an
    event (a change of a registry's view, ...); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {what}")
        await wait(min(left, 1.0))


def request_until(client: FramedClient, args: Tuple[str, ...], done: Callable[[Message], bool],
                  timeout: float = 10.0, limit: int = 20_000) -> Message:
    """Repeat a request until its reply satisfies ``done`` (each try is a real
    round trip: we wait on the reply, never on a clock), bounded in time and count."""
    deadline = time.monotonic() + timeout
    reply = None
    for _ in range(limit):
        reply = client.request(*args)
        if done(reply) or time.monotonic() > deadline:
            break
    assert reply is not None and done(reply), f"last reply to {args}: {reply!r}"
    return reply
