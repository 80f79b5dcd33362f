"""Stopping asyncio tasks that may swallow a cancellation."""

from __future__ import annotations

import asyncio

__all__ = ["stop_task"]


async def stop_task(task: asyncio.Future, timeout: float) -> None:
    """Cancel ``task`` and wait for it to end, cancelling again every 50 ms
    (a cancellation swallowed by ``asyncio.wait_for`` on Python < 3.12 or by
    a client library must not leave it running), for at most ``timeout``
    seconds.  Never raises what the task raised."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done():
        left = deadline - loop.time()
        if left <= 0:
            return
        task.cancel()
        await asyncio.wait({task}, timeout=min(0.05, left))
    if not task.cancelled():
        task.exception()  # retrieved: a failure was logged by the task itself
