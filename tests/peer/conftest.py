"""Fixtures for the peer tests (helpers live in peer_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from peer_helpers import Cluster


@pytest.fixture
def cluster(tmp_path: Path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()
