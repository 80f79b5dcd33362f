"""The eurechat peer: ``python -m eurechat.peer`` and its asyncio API.

``Peer`` is the engine (listener, delivery, persistent outbox and inbox);
``eurechat.peer.cli`` puts a terminal in front of it.
"""

from .directory_client import (
    AlreadyOnline,
    AuthFailed,
    DirectoryUnavailable,
    NameTaken,
    PasswordRefused,
    Registration,
)
from .peer import IncomingMessage, Peer, PeerError, Timings
from .store import StoreLocked

__all__ = ["Peer", "IncomingMessage", "PeerError", "Timings", "Registration", "AuthFailed",
           "NameTaken", "PasswordRefused", "AlreadyOnline", "DirectoryUnavailable", "StoreLocked"]
