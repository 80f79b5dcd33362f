"""The peer's tunable timings and limits, and how the environment sets them.

Every timing has a SPEC default (section 4) and an ``EURECHAT_*`` override;
tests use short ones.  A bad override is ignored with a WARNING, never
obeyed: these are tuning knobs, and a typo must not stop the peer.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

from .protocol import PEER_MAX_PAYLOAD

#: The logger of the peer's delivery engine (connections, routes, commits):
#: one name for operators to filter on, whichever module writes the line.
LOG_NAME = "eurechat.peer.node"

log = logging.getLogger(LOG_NAME)

#: A lookup kept this long (seconds) for a name we have nothing queued for,
#: then dropped by the sweep (``AddressBook.prune``).
CACHE_KEEP = 600.0

#: Largest text ``send()`` accepts: what fits a peer's 1 MiB inbound limit.
MAX_TEXT_BYTES = PEER_MAX_PAYLOAD

#: A sighting (``waiting()``'s ``last_seen``) is written to the store at most
#: this often per name: "seen 3 minutes ago" needs no fsync per lookup.
SEEN_SAVE_EVERY = 600.0


def env_float(name: str, default: float, zero_ok: bool = False) -> float:
    """``name`` from the environment, if it is a usable setting: finite and
    positive (or zero, where zero means "off").  Anything else is ignored with
    a WARNING that names it: a typo must neither stop the peer nor slip
    through as ``nan`` (every comparison false: a probe never sent), ``inf``
    or ``0`` (a window of 0 never sends; a timer of 0 spins)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and (value > 0 or (zero_ok and value == 0)):
        return value
    log.warning("ignoring %s=%r: not a %s number; using %g", name, raw,
                "non-negative" if zero_ok else "positive", default)
    return default


@dataclass
class Timings:
    """Retry, cache and window settings.  Defaults follow SPEC section 4;
    every one can be overridden from the environment (tests use short ones)."""

    retry_base: float = 0.25        #: first retry delay for an unreachable recipient
    retry_max: float = 30.0         #: backoff cap for recipients (SPEC: 30 s)
    directory_retry_base: float = 0.2
    directory_retry_max: float = 30.0
    query_ttl: float = 2.0          #: how long a QUERY answer is trusted
    directory_wait: float = 3.0     #: a lookup waits this long for a reconnecting directory
    lookup_interval: float = 3.0    #: look an unreachable recipient up at least this often
    connect_timeout: float = 5.0
    #: a PING (``/ping``, or the probe of a silent connection) unanswered this
    #: long has failed
    ping_timeout: float = 5.0
    #: messages of ours unacknowledged and nothing at all received for this
    #: long: probe the connection with a PING (0: never probe).  See ``Liveness``.
    ack_timeout: float = 10.0
    window: int = 1024              #: unacknowledged messages in flight per recipient
    frame_timeout: float = 60.0     #: a frame once started must complete within this
    idle_timeout: float = 300.0     #: close a connection that sent nothing for this long
    rebind_check: float = 30.0      #: check our own registration (and BIND again) this often
    prune_interval: float = 3600.0  #: look for expired inbox records this often
    prune_batch: int = 1000         #: inbox records deleted per pass at most

    @classmethod
    def from_env(cls) -> Timings:
        t = cls()
        t.retry_base = env_float("EURECHAT_RETRY_BASE", t.retry_base)
        t.retry_max = env_float("EURECHAT_RETRY_MAX", t.retry_max)
        t.directory_retry_base = env_float("EURECHAT_DIRECTORY_RETRY_BASE",
                                           t.directory_retry_base)
        t.directory_retry_max = env_float("EURECHAT_DIRECTORY_RETRY_MAX",
                                          t.directory_retry_max)
        t.query_ttl = env_float("EURECHAT_QUERY_TTL", t.query_ttl, zero_ok=True)
        t.directory_wait = env_float("EURECHAT_DIRECTORY_WAIT", t.directory_wait, zero_ok=True)
        t.lookup_interval = env_float("EURECHAT_LOOKUP_INTERVAL", t.lookup_interval)
        t.connect_timeout = env_float("EURECHAT_CONNECT_TIMEOUT", t.connect_timeout)
        t.ping_timeout = env_float("EURECHAT_PING_TIMEOUT", t.ping_timeout)
        t.ack_timeout = env_float("EURECHAT_ACK_TIMEOUT", t.ack_timeout, zero_ok=True)
        t.window = max(1, int(env_float("EURECHAT_WINDOW", t.window)))
        t.frame_timeout = env_float("EURECHAT_FRAME_TIMEOUT", t.frame_timeout)
        t.idle_timeout = env_float("EURECHAT_IDLE_TIMEOUT", t.idle_timeout)
        t.rebind_check = env_float("EURECHAT_REBIND_CHECK", t.rebind_check)
        t.prune_interval = env_float("EURECHAT_PRUNE_INTERVAL", t.prune_interval)
        t.prune_batch = max(1, int(env_float("EURECHAT_PRUNE_BATCH", t.prune_batch)))
        return t


__all__ = ["Timings", "env_float", "CACHE_KEEP", "MAX_TEXT_BYTES", "SEEN_SAVE_EVERY", "LOG_NAME"]
