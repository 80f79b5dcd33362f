"""The errors of the directory's backends.

``BackendUnavailable`` is the one meaning of "a backend cannot be reached
right now, retry later": the server answers ``ERR directory unavailable,
retry later`` for it (and keeps the session), start-up turns it into one
line and exit 2.  Its subclasses only say which store it was, for the log.
"""

from __future__ import annotations

__all__ = ["BackendUnavailable", "RegistryUnavailable", "AccountsUnavailable",
           "ThrottleUnavailable", "AccountExists"]


class BackendUnavailable(Exception):
    """A backend (presence, accounts, throttle) cannot be reached right now."""


class RegistryUnavailable(BackendUnavailable):
    """The shared presence store cannot be reached (or its read view is stale)."""


class AccountsUnavailable(BackendUnavailable):
    """The account database cannot be reached."""


class ThrottleUnavailable(BackendUnavailable):
    """The failed-login counters cannot be reached."""


class AccountExists(Exception):
    """REGISTER (or ``useradd``) of a name that is taken."""
