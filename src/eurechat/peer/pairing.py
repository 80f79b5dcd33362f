"""The pair rule: of two connections between the same two peers, which one
is kept, and how the other one goes.

A pair of peers shares one connection.  Either side dials when it has
something to send and no connection, so two can exist for a moment:

- **Both sides dialled at once.**  The connection dialled by the peer whose
  name sorts first is kept.  Both sides apply the same rule, so they agree
  without talking about it.  The loser is closed gracefully: its dialler is
  alive and reads what is left on it.
- **The same side dialled both.**  It dials only when it has no connection,
  so it gave the older one up (closed it, or lost it without our hearing:
  its host vanished, it restarted, a NAT forgot the mapping).  The newer is
  kept; keeping the older would close, at once, every connection it makes
  until the dead one idles out.  The older is aborted: nobody will read
  what is still buffered on it, and a graceful close would wait for that.

Whenever the connection kept is the one we already had, it is probed: if
the other side gave it up and dialled anew it is dead without our knowing
(``Liveness`` then closes it), if both dialled at once it answers at once.

Sans-IO: names and "who dialled" in, a ``Settlement`` out.
"""

from __future__ import annotations

from typing import NamedTuple


class Settlement(NamedTuple):
    """The pair rule's decision about a current and a new connection."""

    keep_new: bool      #: keep the new connection (else the current one)
    abort_loser: bool   #: drop the other one with its buffer (else close it gracefully)
    probe_kept: bool    #: PING the kept connection: it may be dead without our knowing


def settle(me: str, them: str, current_dialled: bool, new_dialled: bool) -> Settlement:
    """Which of two connections with ``them`` to keep.  ``*_dialled``: we
    dialled that connection (else ``them`` did)."""
    if current_dialled == new_dialled:
        return Settlement(keep_new=True, abort_loser=True, probe_kept=False)
    # One each: keep the one dialled by the smaller name.
    keep_mine = me < them
    keep_current = current_dialled == keep_mine
    return Settlement(keep_new=not keep_current, abort_loser=False, probe_kept=keep_current)


__all__ = ["Settlement", "settle"]
