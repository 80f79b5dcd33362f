"""Fixtures for the peer tests (helpers live in support/peers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.peers import Cluster


@pytest.fixture
def cluster(tmp_path: Path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()
