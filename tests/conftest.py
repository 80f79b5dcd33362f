"""Suite-wide settings: which framing implementation is under test, and
hypothesis profiles sized for a 2-core CI machine."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=150, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "thorough", max_examples=2000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header(config):
    import eurechat.framing as framing
    return f"eurechat framing implementation: {framing.IMPLEMENTATION}"


def pytest_sessionstart(session):
    """When the extension was required (ci/test.sh), a silent fallback to the
    pure-Python decoder is a failed build, not a passing suite."""
    import eurechat.framing as framing
    if os.environ.get("EURECHAT_REQUIRE_EXTENSION") == "1" and not os.environ.get(
            "EURECHAT_PUREPYTHON"):
        if framing.IMPLEMENTATION != "cython":
            raise pytest.UsageError(
                "EURECHAT_REQUIRE_EXTENSION=1 but eurechat.framing.IMPLEMENTATION is "
                f"{framing.IMPLEMENTATION!r}: the compiled extension did not build or import")
