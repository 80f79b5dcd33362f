"""Dialling one recipient: when to try again, and whether an address is
worth a dial.

The rules:

- **Backoff.**  Each failure (a dial refused or timed out, a connection
  lost before the recipient acknowledged anything on it) counts one
  ``attempt``; the next try waits an exponential backoff with jitter,
  capped at ``retry_max``.  Only an ACK resets the count (``proved``): a
  remote that accepts and resets at once would otherwise be redialled in a
  tight loop.
- **Look up often, dial a failed address rarely.**  With a directory, the
  recipient is looked up at least every ``lookup_interval`` (cheap), so a
  recipient coming back is seen quickly; but the address that failed is
  dialled again only when its own backoff (drawn once, when it failed) has
  run out.  A new address, or the recipient seen unregistered in between
  (a restart, maybe at the very same address), is dialled at once.
- **A working connection that drops** is redialled at once; one lost before
  it proved anything is as good as a failed dial.
- **Tell the user once** per outage that the recipient is unreachable.

Sans-IO: explicit times (the event loop's clock) in, delays and yes/no out.
The jitter comes from the ``backoff`` function the caller passes.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

Address = Tuple[str, int]

#: ``backoff(attempt)``: seconds to wait after ``attempt + 1`` failures
#: (``attempt`` >= 0).
Backoff = Callable[[int], float]


class Dialing:
    """The dialling state of one recipient."""

    __slots__ = ("backoff", "lookup_interval", "attempt", "failed_addr", "dial_after",
                 "offline_reported")

    def __init__(self, backoff: Backoff, lookup_interval: float) -> None:
        self.backoff = backoff
        self.lookup_interval = lookup_interval
        #: failures (dials refused or timed out, connections lost before the
        #: recipient ACKed anything on them) since the route last proved
        #: itself with an ACK; the exponent of the backoff
        self.attempt = 0
        #: the address that failed last, and when it may be dialled again
        self.failed_addr: Optional[Address] = None
        self.dial_after = 0.0
        self.offline_reported = False

    def first_delay(self) -> Optional[float]:
        """When a route with messages and no connection dials: now if
        nothing failed since the last ACK, else (None) after ``delay()``."""
        return 0 if self.attempt == 0 else None

    def delay(self, now: float, has_directory: bool) -> float:
        """Seconds until the next try (a lookup and maybe a dial)."""
        # Half the first backoff when nothing failed yet (a connection that
        # was lost at once, say): 2**-1 times the base, as the doubling goes.
        delay = self.backoff(self.attempt - 1) if self.attempt else self.backoff(0) / 2
        if self.failed_addr is not None:
            # That address's own backoff, drawn once when it failed (a
            # second draw of the jitter could fire before it and be refused).
            delay = max(delay, self.dial_after - now)
        if has_directory:
            # Looking up is cheap, dialling a dead address is not: look up
            # at least every lookup_interval, dial the failed address only
            # when its own backoff has run out (``may_dial``).
            delay = min(delay, self.lookup_interval)
        return delay

    def may_dial(self, addr: Address, now: float) -> bool:
        """A lookup found the recipient at ``addr``: dial it now?  Not if it
        is the address that failed and its backoff has not run out."""
        return not (addr == self.failed_addr and now < self.dial_after)

    def failed(self, addr: Address, now: float) -> None:
        """``addr`` failed us: refused, timed out, or lost before the
        recipient acknowledged anything on it.  Not dialled again before its
        backoff runs out, unless the recipient is seen anew."""
        self.failed_addr = addr
        self.dial_after = now + self.backoff(self.attempt)

    def unreachable(self, queued: bool) -> bool:
        """A try failed (nothing to dial, or the dial failed): one more
        attempt.  True (tell the user) the first time since the last ACK
        that this happens with messages ``queued``."""
        first = queued and not self.offline_reported
        if first:
            self.offline_reported = True
        self.attempt += 1
        return first

    def lost(self, addr: Optional[Address], now: float) -> Optional[float]:
        """The connection we sent over (dialled to ``addr``, None if the
        recipient dialled it) is gone and there is no other.  Returns the
        redial delay: 0 if it had proved itself (an ACK since the last
        failure), else None (the backoff, for that address too: a lookup
        finding it unchanged must not redial it)."""
        first = self.attempt == 0
        if not first and addr is not None:
            self.failed(addr, now)
        self.attempt += 1
        return 0 if first else None

    def proved(self) -> None:
        """The recipient recorded something we sent: the only reset of the
        backoff.  A connection merely accepted proves nothing."""
        self.attempt = 0
        self.offline_reported = False
        self.failed_addr = None

    def unregistered(self) -> None:
        """The directory says the recipient is not registered: its next
        registration is new (a restart, maybe at the address that failed),
        so dial it at once, not after that address's backoff."""
        self.failed_addr = None


__all__ = ["Dialing", "Address", "Backoff"]
