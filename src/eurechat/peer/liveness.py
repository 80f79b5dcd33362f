"""When to probe a connection that owes us an answer, and when to give it up.

Sans-IO: times (``time.monotonic()``) and byte counts in, a ``Verdict``
out; the caller sends the PING or closes the connection.
"""

from __future__ import annotations

import enum


class Verdict(enum.Enum):
    """What ``Liveness.check`` says to do with a connection."""

    OK = "ok"          #: nothing to do
    PROBE = "probe"    #: send a PING now
    DEAD = "dead"      #: close it: the other side is gone or the connection half-open


class Liveness:
    """The liveness rule of one connection.

    A connection whose other host vanished without a FIN or RST (power cut,
    network change, a NAT or firewall that dropped its state) stays "open":
    writes succeed, nothing ever comes back.  Waiting for the idle timeout
    (300 s) would hold our messages that long, so:

    1. **Probe.** Messages of ours are in flight, unacknowledged, and nothing
       at all has arrived for ``ack_timeout`` since we started waiting (the
       later of the last receive and the first write after it that owes us
       an answer, i.e. a MESSAGE or PING, not our ACK or PONG): send a PING.
       An idle connection with nothing in flight is never probed.
    2. **Give up.** Nothing at all arrives within ``ping_timeout`` of the
       probe: the connection is dead.  Anything received (the PONG, an ACK,
       a message) answers the probe.

    One exception keeps slow links working: while our own bytes queued ahead
    of the PING are still being taken by the remote TCP (``delivered``
    grows while something is ``outstanding``), the PING has not reached the
    other side yet, so its clock restarts.  A 1 MiB message on a slow uplink
    is not a dead connection.
    """

    OK = Verdict.OK
    PROBE = Verdict.PROBE
    DEAD = Verdict.DEAD

    __slots__ = ("ack_timeout", "ping_timeout", "probe_at", "delivered")

    def __init__(self, ack_timeout: float, ping_timeout: float) -> None:
        self.ack_timeout = ack_timeout
        self.ping_timeout = ping_timeout
        self.probe_at = 0.0    #: when the unanswered probe was sent (0: none)
        self.delivered = 0     #: ``delivered`` at the previous check

    def check(self, now: float, in_flight: bool, last_rx: float, tx_since: float,
              delivered: int = 0, outstanding: int = 0) -> Verdict:
        """One look at the connection.

        ``in_flight``: messages of ours sent on it and unacknowledged;
        ``last_rx``: when anything last arrived; ``tx_since``: when we first
        wrote something owing us an answer after that (<= ``last_rx`` if we
        have not); ``delivered``: bytes the remote TCP has taken so far;
        ``outstanding``: our bytes not yet taken by it (in our buffer or the
        kernel's)."""
        moved = delivered > self.delivered
        self.delivered = delivered
        if self.probe_at:
            if last_rx > self.probe_at:
                self.probe_at = 0.0          # answered: alive; judge afresh below
            elif outstanding and moved:
                self.probe_at = now          # still pushing what is ahead of the PING
                return Verdict.OK
            elif now - self.probe_at > self.ping_timeout:
                return Verdict.DEAD
            else:
                return Verdict.OK
        if self.due(now, in_flight, last_rx, tx_since):
            self.probe_at = now
            return Verdict.PROBE
        return Verdict.OK

    def due(self, now: float, in_flight: bool, last_rx: float, tx_since: float) -> bool:
        """No probe out, and it is time for one.  ``check`` needs the byte
        counts (a system call) only once this is true or a probe is out, so
        the sweep asks this first."""
        return bool(in_flight and self.ack_timeout > 0 and
                    now - max(last_rx, tx_since) > self.ack_timeout)

    def probe_now(self, now: float, delivered: int) -> bool:
        """Doubt the connection at once (the caller sends the PING): the
        probe's clock starts at ``now``, from ``delivered`` bytes taken so
        far.  False (send nothing) if a probe is already out."""
        if self.probe_at:
            return False
        self.delivered = delivered
        self.probe_at = now
        return True

    @property
    def probing(self) -> bool:
        """A probe is out, unanswered."""
        return bool(self.probe_at)


__all__ = ["Liveness", "Verdict"]
