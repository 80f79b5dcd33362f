"""Fixtures of the framing tests: every test runs against BOTH decoders.

The compiled module is imported directly (not through ``eurechat.framing``),
so the twins are compared even in the ``EURECHAT_PUREPYTHON=1`` pass.  A
missing extension fails the cython half loudly instead of skipping it.
"""

from __future__ import annotations

import importlib

import pytest

from eurechat import fallback, framing

IMPLEMENTATIONS = ("python", "cython")


def decoder_class(name: str):
    """The ``Decoder`` class of one implementation."""
    if name == "python":
        return fallback.Decoder
    try:
        return importlib.import_module("eurechat._framing").Decoder
    except ImportError as exc:  # pragma: no cover - a broken build
        pytest.fail(f"compiled eurechat._framing does not import: {exc}")


@pytest.fixture(scope="session", params=IMPLEMENTATIONS)
def impl(request) -> str:
    """Name of the implementation under test."""
    return request.param


@pytest.fixture(scope="session")
def Decoder(impl):  # noqa: N802 - it stands for the class
    return decoder_class(impl)


@pytest.fixture
def fr(impl, monkeypatch):
    """``eurechat.framing`` with its ``Decoder`` (used by parse/parse_all)
    switched to the implementation under test (hypothesis tests use
    ``support.framing_trace.using`` instead: function-scoped fixtures and @given
    do not mix)."""
    monkeypatch.setattr(framing, "Decoder", decoder_class(impl))
    return framing


@pytest.fixture(scope="session")
def both():
    """Both Decoder classes, python first, for differential tests."""
    return decoder_class("python"), decoder_class("cython")
