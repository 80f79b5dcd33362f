"""The accounts seam: ``AccountStore`` (who may log in), and the one flow of
creating and checking accounts that every store shares (``PasswordStore``).

Why one flow: the rules a person meets -- which names and passwords are
accepted, that a taken name is refused before a hash is paid for, that an
unknown user costs exactly one hash like a wrong password (so neither the
reply nor its timing tells which names exist), that a record in an older
scheme is replaced at the next successful login -- must not depend on
whether the directory keeps its accounts in SQLite or PostgreSQL.  A store
supplies four small storage operations; hashing runs in ``hash_pool()``,
never on the event loop.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import logging
from typing import List, NamedTuple, Optional

from ...names import check_account, valid_username
from ..errors import AccountExists, AccountsUnavailable
from .hashing import DUMMY_PASSWORD, hash_password, hash_pool, verify_password

log = logging.getLogger("eurechat.directory.accounts")

__all__ = ["AccountStore", "PasswordStore", "SyncAccountStore", "AccountExists",
           "AccountsUnavailable", "in_hash_pool", "KeyKind", "KeyChange"]


class KeyKind(str, enum.Enum):
    """Why a user's enrolled key changed (SPEC §5.3: kept with its time)."""

    ENROL = "enrol"    # the first key of the account
    ROTATE = "rotate"  # a new key, authorised by a certificate of the old one
    RESET = "reset"    # a new key, authorised by the password alone (a lost key)


class KeyChange(NamedTuple):
    """One entry of a user's key history, oldest first."""

    fingerprint: str
    kind: KeyKind
    at: float  # seconds since the epoch


async def in_hash_pool(fn, *args):
    """Run a hashing function in the process-wide hash pool."""
    return await asyncio.get_running_loop().run_in_executor(hash_pool(), fn, *args)


class AccountStore(abc.ABC):
    """Accounts: names and salted memory-hard password records (``hashing``).

    ``verify`` of an unknown user costs the same as of a known one (a dummy
    record), so neither the reply nor its timing tells which names exist."""

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Open/create the store; raise AccountsUnavailable if it cannot."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release connections."""

    @abc.abstractmethod
    async def create(self, name: str, password: bytes) -> None:
        """Create an account; raise AccountExists or ValueError (invalid name/password)."""

    @abc.abstractmethod
    async def verify(self, name: str, password: bytes) -> bool:
        """True when ``name`` exists and ``password`` matches."""

    @abc.abstractmethod
    async def delete(self, name: str) -> bool:
        """Remove an account; whether it existed."""

    @abc.abstractmethod
    async def names(self) -> List[str]:
        """All account names, sorted."""

    @abc.abstractmethod
    async def key(self, name: str) -> Optional[str]:
        """The fingerprint of ``name``'s enrolled key, None if none (or no account)."""

    @abc.abstractmethod
    async def change_key(self, name: str, expected: Optional[str], new: str,
                         kind: KeyKind) -> bool:
        """Enrol ``new`` as ``name``'s key if the enrolled one is still
        ``expected`` (None: none yet), and record the change in the history,
        in one transaction.  False if the account is gone or its key changed
        meanwhile: two concurrent requests cannot both win, and the loser is
        decided again against the key that won."""

    @abc.abstractmethod
    async def key_history(self, name: str) -> List[KeyChange]:
        """Every key change of ``name``, oldest first."""


class PasswordStore(AccountStore):
    """``create`` and ``verify`` on top of a store's record operations.

    Subclasses implement ``_record``, ``_insert`` and ``_replace`` (and
    ``delete``/``names``), and call ``_prepare`` from ``start``."""

    _dummy: Optional[str] = None

    @abc.abstractmethod
    async def _record(self, name: str) -> Optional[str]:
        """The password record of ``name``, None if there is no such account."""

    @abc.abstractmethod
    async def _insert(self, name: str, record: str) -> None:
        """Add an account; raise AccountExists if the name is taken."""

    @abc.abstractmethod
    async def _replace(self, name: str, old: str, new: str) -> bool:
        """Replace ``name``'s record by ``new`` only if it is still ``old``."""

    async def _prepare(self) -> None:
        """The dummy record unknown users are checked against: a real argon2id
        hash with today's parameters, so it costs what a real check costs."""
        self._dummy = await in_hash_pool(hash_password, DUMMY_PASSWORD)

    async def create(self, name: str, password: bytes) -> None:
        check_account(name, password)
        if await self._record(name) is not None:  # refused before paying for a hash
            raise AccountExists(name)
        await self._insert(name, await in_hash_pool(hash_password, password))

    async def verify(self, name: str, password: bytes) -> bool:
        assert self._dummy is not None, "start() first"
        record = await self._record(name) if valid_username(name) else None
        verdict = await in_hash_pool(verify_password, password, record or self._dummy)
        if record is None or not verdict.ok:
            return False
        if verdict.rehash:
            await self._upgrade(name, record, password)
        return True

    async def _upgrade(self, name: str, old: str, password: bytes) -> None:
        """Replace a record in an older scheme (or with other parameters) by a
        new argon2id one, now that the password is known to be right.  The
        login succeeds even if this fails: the next one tries again."""
        new = await in_hash_pool(hash_password, password)
        try:
            if await self._replace(name, old, new):
                log.info("password record of %r upgraded to argon2id", name)
        except AccountsUnavailable as exc:
            log.warning("could not upgrade the password record of %r: %s", name, exc)


class SyncAccountStore(abc.ABC):
    """The blocking side of a store, for ``eurechat-directory useradd``,
    ``userdel`` and ``users`` (the server may be running meanwhile)."""

    @abc.abstractmethod
    def record(self, name: str) -> Optional[str]:
        """The password record of ``name``, None if there is no such account."""

    @abc.abstractmethod
    def insert(self, name: str, record: str) -> None:
        """Add an account; raise AccountExists if the name is taken."""

    @abc.abstractmethod
    def delete(self, name: str) -> bool:
        """Remove an account; whether it existed."""

    @abc.abstractmethod
    def names(self) -> List[str]:
        """All account names, sorted."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def create(self, name: str, password: bytes) -> None:
        """Validate, refuse a taken name, hash with argon2id, insert."""
        check_account(name, password)
        if self.record(name) is not None:
            raise AccountExists(name)
        self.insert(name, hash_password(password))
