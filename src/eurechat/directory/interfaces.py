"""The directory's four backend seams and their errors, in one import.

Each seam is defined in its package (``presence``, ``accounts``,
``throttle``, ``election``, each ``base.py``) next to its implementations;
``backends.py`` builds them.  The protocol core (``session.py``,
``server.py``) sees only these names.
"""

from __future__ import annotations

from .accounts.base import AccountStore
from .election.base import Election
from .errors import (
    AccountExists,
    AccountsUnavailable,
    BackendUnavailable,
    RegistryUnavailable,
    ThrottleUnavailable,
)
from .presence.base import Registration, Registry
from .throttle.base import Throttle

__all__ = ["Registration", "Registry", "AccountStore", "Throttle", "Election",
           "BackendUnavailable", "RegistryUnavailable", "AccountsUnavailable",
           "ThrottleUnavailable", "AccountExists"]
