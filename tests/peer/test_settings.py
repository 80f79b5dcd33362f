"""The timings' environment parsing on its own (the CLI's warning lines are
tested through the real CLI in test_peer_env.py)."""

from __future__ import annotations

import logging

import pytest

from eurechat.peer.settings import Timings, env_float


class TestEnvFloat:
    def test_unset_is_the_default(self, monkeypatch):
        monkeypatch.delenv("EURECHAT_TEST_KNOB", raising=False)
        assert env_float("EURECHAT_TEST_KNOB", 2.5) == 2.5

    @pytest.mark.parametrize("raw,zero_ok,want", [
        ("1.5", False, 1.5), ("0", True, 0.0), ("0", False, 9.0), ("-1", True, 9.0),
        ("nan", True, 9.0), ("inf", False, 9.0), ("x", False, 9.0)])
    def test_only_finite_positive_or_allowed_zero_is_taken(self, monkeypatch, caplog,
                                                           raw, zero_ok, want):
        monkeypatch.setenv("EURECHAT_TEST_KNOB", raw)
        with caplog.at_level(logging.WARNING):
            assert env_float("EURECHAT_TEST_KNOB", 9.0, zero_ok=zero_ok) == want
        warned = [r.getMessage() for r in caplog.records]
        assert bool(warned) == (want == 9.0)
        if warned:
            assert warned[0].startswith(f"ignoring EURECHAT_TEST_KNOB={raw!r}")


class TestTimings:
    def test_integer_knobs_are_at_least_one(self, monkeypatch):
        monkeypatch.setenv("EURECHAT_WINDOW", "0.5")
        monkeypatch.setenv("EURECHAT_PRUNE_BATCH", "0.2")
        t = Timings.from_env()
        assert (t.window, t.prune_batch) == (1, 1)

    def test_every_knob_is_read(self, monkeypatch):
        names = {"retry_base": "EURECHAT_RETRY_BASE", "retry_max": "EURECHAT_RETRY_MAX",
                 "directory_retry_base": "EURECHAT_DIRECTORY_RETRY_BASE",
                 "directory_retry_max": "EURECHAT_DIRECTORY_RETRY_MAX",
                 "query_ttl": "EURECHAT_QUERY_TTL", "directory_wait": "EURECHAT_DIRECTORY_WAIT",
                 "lookup_interval": "EURECHAT_LOOKUP_INTERVAL",
                 "connect_timeout": "EURECHAT_CONNECT_TIMEOUT",
                 "ping_timeout": "EURECHAT_PING_TIMEOUT", "ack_timeout": "EURECHAT_ACK_TIMEOUT",
                 "window": "EURECHAT_WINDOW", "frame_timeout": "EURECHAT_FRAME_TIMEOUT",
                 "idle_timeout": "EURECHAT_IDLE_TIMEOUT", "rebind_check": "EURECHAT_REBIND_CHECK",
                 "prune_interval": "EURECHAT_PRUNE_INTERVAL",
                 "prune_batch": "EURECHAT_PRUNE_BATCH"}
        assert set(names) == set(vars(Timings()))
        for env in names.values():
            monkeypatch.setenv(env, "7")
        t = Timings.from_env()
        assert all(getattr(t, field) == 7 for field in names)
