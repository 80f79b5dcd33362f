"""Safety numbers: digits two people can read to each other to check keys.

A directory introduces keys; a compromised one could introduce a false key at
a first contact (docs/security.md).  Comparing a number derived from both
fingerprints, out of band, is what catches that.  The number is the same on
both sides whichever of the two computes it: each user's half is derived from
that user's name and fingerprint alone, and the halves are ordered by name.

Each half is 30 decimal digits taken from SHA-512 over a versioned, length-
delimited encoding of (name, fingerprint), five bytes to five digits at a
time, as in Signal's displayable fingerprints; together 60 digits shown in
twelve groups of five.
"""

from __future__ import annotations

import hashlib
from typing import Tuple

__all__ = ["safety_number", "format_safety_number"]

_VERSION = b"eurechat-safety-number-1"
_CHUNKS = 6  # five-digit chunks per half


def _half(name: str, fingerprint: str) -> str:
    encoded = [_VERSION, name.encode("utf-8"), fingerprint.encode("ascii")]
    digest = hashlib.sha512(b"".join(len(p).to_bytes(2, "big") + p for p in encoded)).digest()
    return "".join(
        f"{int.from_bytes(digest[i * 5:i * 5 + 5], 'big') % 100000:05d}" for i in range(_CHUNKS))


def safety_number(me: Tuple[str, str], them: Tuple[str, str]) -> str:
    """60 digits for the pair ``(name, fingerprint)`` × ``(name, fingerprint)``.

    Symmetric: ``safety_number(a, b) == safety_number(b, a)``; it changes when
    either key changes.
    """
    halves = sorted([(me[0], _half(*me)), (them[0], _half(*them))])
    return halves[0][1] + halves[1][1]


def format_safety_number(number: str) -> str:
    """Twelve groups of five digits, the way people read them aloud."""
    return " ".join(number[i:i + 5] for i in range(0, len(number), 5))
