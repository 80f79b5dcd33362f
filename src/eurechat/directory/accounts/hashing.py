"""Password records (SPEC §5.3): argon2id for every new one; scrypt records
written by earlier versions still verify and are replaced by argon2id at the
account's next successful login.

Why argon2id with these parameters: it is memory-hard against GPUs and
side-channel resistant, and ``m=19 MiB, t=2, p=1`` is OWASP's baseline, about
30-50 ms per hash on one core.  Each hash runs in one process-wide thread
pool (``hash_pool``; argon2-cffi and hashlib release the GIL), never on the
event loop.  The comparison inside argon2 and ``hmac.compare_digest`` for
scrypt are constant-time.

Records:

* ``$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`` (the PHC string), and
* ``scrypt$N$r$p$salt_hex$hash_hex`` (read only: never written for an account).

``verify`` says whether a record should be rewritten (``Verdict.rehash``):
every scrypt record, and an argon2id record whose parameters differ from
today's.  The stores hash the password again and replace the record only if
it is still the one they read (a concurrent change of the account wins).

``EURECHAT_ARGON2_MEMORY_KIB`` lowers the memory cost (at least 8) and
``EURECHAT_SCRYPT_N`` the cost of scrypt records written by ``hash_scrypt``
(test suites, which log in thousands of times); never set them in production.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
import os
import threading
from typing import NamedTuple, Optional

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ...names import MAX_PASSWORD

__all__ = ["hash_password", "verify_password", "check_password", "needs_rehash",
           "hash_scrypt", "Verdict", "hash_pool", "DUMMY_PASSWORD", "ARGON2_TIME_COST",
           "ARGON2_MEMORY_KIB", "ARGON2_PARALLELISM"]

ARGON2_TIME_COST = 2
ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_PARALLELISM = 1
_HASH_LEN, _SALT_LEN = 32, 16
#: What the dummy record of the stores hashes: verifying an unknown user
#: against it costs what a known user costs, and it never matches.
DUMMY_PASSWORD = b"dummy password, never matches"

_SCRYPT_R, _SCRYPT_P, _SCRYPT_DKLEN = 8, 1, 32


class Verdict(NamedTuple):
    """The outcome of checking a password against a record."""

    ok: bool
    #: the password matched and the record should be replaced by a new hash
    rehash: bool = False


def _memory_kib() -> int:
    text = os.environ.get("EURECHAT_ARGON2_MEMORY_KIB")
    if not text:
        return ARGON2_MEMORY_KIB
    value = int(text)
    if value < 8 * ARGON2_PARALLELISM:
        raise ValueError("EURECHAT_ARGON2_MEMORY_KIB must be >= 8")
    return value


_hashers: dict = {}


def _hasher() -> PasswordHasher:
    """The argon2id hasher for the current cost (one per cost, kept)."""
    memory = _memory_kib()
    hasher = _hashers.get(memory)
    if hasher is None:
        hasher = _hashers[memory] = PasswordHasher(
            time_cost=ARGON2_TIME_COST, memory_cost=memory, parallelism=ARGON2_PARALLELISM,
            hash_len=_HASH_LEN, salt_len=_SALT_LEN, type=Type.ID)
    return hasher


def hash_password(password: bytes) -> str:
    """A new argon2id record for ``password`` (random salt)."""
    return _hasher().hash(password)


def _check_argon2(password: bytes, record: str) -> Verdict:
    hasher = _hasher()
    try:
        hasher.verify(record, password)
    except VerifyMismatchError:
        return Verdict(False)
    except (VerificationError, InvalidHashError, ValueError):
        return Verdict(False)  # a damaged record never matches
    return Verdict(True, hasher.check_needs_rehash(record))


def _check_scrypt(password: bytes, record: str) -> Verdict:
    try:
        _scheme, n_s, r_s, p_s, salt_hex, digest_hex = record.split("$")
        n, r, p = int(n_s), int(r_s), int(p_s)
        salt, expected = bytes.fromhex(salt_hex), bytes.fromhex(digest_hex)
        digest = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p,
                                maxmem=256 * n * r + (1 << 20), dklen=len(expected))
    except ValueError:
        return Verdict(False)
    ok = hmac.compare_digest(digest, expected)
    return Verdict(ok, ok)


def verify_password(password: bytes, record: str) -> Verdict:
    """Check ``password`` against ``record`` (either scheme); a damaged or
    unknown record never matches.  Blocking and CPU-heavy: run it in
    ``hash_pool()``."""
    password = password[:MAX_PASSWORD]
    if record.startswith("$argon2id$"):
        return _check_argon2(password, record)
    if record.startswith("scrypt$"):
        return _check_scrypt(password, record)
    return Verdict(False)


def check_password(password: bytes, record: str) -> bool:
    """Whether ``password`` matches ``record``."""
    return verify_password(password, record).ok


def needs_rehash(record: str) -> bool:
    """Whether ``record`` is not an argon2id hash with today's parameters."""
    if not record.startswith("$argon2id$"):
        return True
    try:
        return _hasher().check_needs_rehash(record)
    except (InvalidHashError, ValueError):
        return True


def scrypt_cost() -> int:
    """scrypt N for ``hash_scrypt``: 2**14 unless ``EURECHAT_SCRYPT_N`` says otherwise."""
    text = os.environ.get("EURECHAT_SCRYPT_N")
    if text:
        n = int(text)
        if n < 2 or n & (n - 1):
            raise ValueError("EURECHAT_SCRYPT_N must be a power of two >= 2")
        return n
    return 1 << 14


def hash_scrypt(password: bytes, n: Optional[int] = None) -> str:
    """A scrypt record as older versions wrote them (for migration tests and
    tools; the stores never write one)."""
    n = n or scrypt_cost()
    salt = os.urandom(16)
    digest = hashlib.scrypt(password, salt=salt, n=n, r=_SCRYPT_R, p=_SCRYPT_P,
                            maxmem=256 * n * _SCRYPT_R + (1 << 20), dklen=_SCRYPT_DKLEN)
    return f"scrypt${n}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


_hash_pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
_hash_pool_lock = threading.Lock()


def hash_pool() -> concurrent.futures.ThreadPoolExecutor:
    """One process-wide pool for password hashing (the hash functions release
    the GIL, so the pool uses every core)."""
    global _hash_pool
    with _hash_pool_lock:
        if _hash_pool is None:
            _hash_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="password-hash")
        return _hash_pool
