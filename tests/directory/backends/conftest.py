"""Fixtures of the backend tests run in this process."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test accounts hash with a small scrypt cost (production keeps 2**14)."""
    monkeypatch.setenv("EURECHAT_SCRYPT_N", "1024")
