"""The rules for user names and passwords, shared by the directory and the peer.

A user name travels as a header argument (``USER 0 alice``, ``BIND``,
``MESSAGE 5 alice``) and as the first field of a ``QUERY`` result line, so
both sides must agree on exactly one rule (SPEC §2): 1-32 characters of
``[A-Za-z0-9_.-]``, not starting with ``.`` or ``-``.  Passwords are 8 to
1024 bytes.  The error texts live here too: the directory sends them in
``ERR`` replies and the command lines print them, and a person should read
the same sentence everywhere.
"""

from __future__ import annotations

import re

__all__ = [
    "USERNAME_RE", "MIN_PASSWORD", "MAX_PASSWORD", "USERNAME_RULE", "INVALID_USERNAME",
    "INVALID_PASSWORD", "valid_username", "valid_password", "check_account",
]

USERNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
MIN_PASSWORD, MAX_PASSWORD = 8, 1024

#: The rule in words (help texts, usage errors).
USERNAME_RULE = "1-32 characters of [A-Za-z0-9_.-], not starting with '.' or '-'"
#: ``ERR`` text (and ``ValueError`` text) for a user name that breaks the rule.
INVALID_USERNAME = f"invalid username: {USERNAME_RULE}"
#: ``ERR`` text (and ``ValueError`` text) for a password of the wrong length.
INVALID_PASSWORD = f"invalid password: {MIN_PASSWORD} to {MAX_PASSWORD} bytes"


def valid_username(name: str) -> bool:
    """Whether ``name`` is a user name (see the module doc)."""
    return bool(USERNAME_RE.fullmatch(name)) and name.isascii()


def valid_password(password: bytes) -> bool:
    """Whether ``password`` (bytes, as sent) has an acceptable length."""
    return MIN_PASSWORD <= len(password) <= MAX_PASSWORD


def check_account(name: str, password: bytes) -> None:
    """Raise ``ValueError`` with the text a person sees when ``name`` or
    ``password`` cannot make an account (the name is checked first)."""
    if not valid_username(name):
        raise ValueError(INVALID_USERNAME)
    if not valid_password(password):
        raise ValueError(INVALID_PASSWORD)
