"""Fixtures of the backend tests run in this process."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stores hash with a small cost (production: argon2id with 19 MiB; the
    hashing tests check that cost themselves)."""
    monkeypatch.setenv("EURECHAT_ARGON2_MEMORY_KIB", "1024")
    monkeypatch.setenv("EURECHAT_SCRYPT_N", "1024")
