"""The EURECHAT_* timing knobs: a bad value is ignored, loudly, never obeyed
(a zero window would queue every message and never send one, ``nan`` is a
timing whose every comparison is false, ``inf`` for an integer knob would
crash the start).  The parsing on its own, then through the real CLI."""

from __future__ import annotations

import logging
import math
import subprocess

import pytest

from eurechat.peer.settings import Timings, env_float
from support.peers import Cluster, peer_cmd


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


BAD = ["nan", "inf", "-inf", "-1", "abc", ""]


@pytest.mark.parametrize("raw", BAD + ["0"])
def test_a_bad_positive_setting_keeps_the_default(monkeypatch, caplog, raw):
    default = Timings()
    for name in ("EURECHAT_PING_TIMEOUT", "EURECHAT_WINDOW", "EURECHAT_IDLE_TIMEOUT",
                 "EURECHAT_PRUNE_BATCH", "EURECHAT_RETRY_BASE"):
        monkeypatch.setenv(name, raw)
    with caplog.at_level("WARNING", logger="eurechat.peer.node"):
        t = Timings.from_env()
    assert (t.ping_timeout, t.window, t.idle_timeout, t.prune_batch, t.retry_base) == (
        default.ping_timeout, default.window, default.idle_timeout, default.prune_batch,
        default.retry_base)
    warned = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"ignoring EURECHAT_WINDOW={raw!r}") for m in warned), warned
    assert len(warned) == 5


@pytest.mark.parametrize("raw", BAD)
def test_a_bad_zero_ok_setting_keeps_the_default(monkeypatch, raw):
    monkeypatch.setenv("EURECHAT_ACK_TIMEOUT", raw)
    monkeypatch.setenv("EURECHAT_QUERY_TTL", raw)
    t = Timings.from_env()
    assert (t.ack_timeout, t.query_ttl) == (Timings().ack_timeout, Timings().query_ttl)


def test_zero_turns_the_probe_off_and_good_values_are_taken(monkeypatch):
    monkeypatch.setenv("EURECHAT_ACK_TIMEOUT", "0")
    monkeypatch.setenv("EURECHAT_WINDOW", "7.9")
    monkeypatch.setenv("EURECHAT_PING_TIMEOUT", "0.25")
    t = Timings.from_env()
    assert t.ack_timeout == 0 and t.window == 7 and t.ping_timeout == 0.25
    monkeypatch.setenv("EURECHAT_WINDOW", "0.5")   # positive, but no whole message
    assert Timings.from_env().window == 1
    assert all(math.isfinite(v) for v in vars(Timings.from_env()).values())


def test_peer_with_a_zero_window_still_delivers_and_says_why(cluster: Cluster):
    """Through the real CLI: the peer warns about the knob and works."""
    bob = cluster.peer("bob")
    env = cluster.env(EURECHAT_WINDOW="0", EURECHAT_ACK_TIMEOUT="nan")
    alice = cluster.peer("alice", "--log-level", "WARNING", env=env)
    alice.cmd("/msg bob through a window of one")
    bob.wait_event("message", text="through a window of one")
    alice.wait_event("delivered")
    alice.p.wait_for_log(r"ignoring EURECHAT_WINDOW='0': not a positive number; using 1024")
    alice.p.wait_for_log(r"ignoring EURECHAT_ACK_TIMEOUT='nan': not a non-negative number")


def test_piped_input_with_a_bad_linger_still_runs(cluster: Cluster):
    """``EURECHAT_EOF_LINGER=abc``: a traceback at the end of piped input before."""
    cluster.peer("bob")
    env = cluster.env(EURECHAT_EOF_LINGER="abc")
    res = subprocess.run(peer_cmd() + ["--user", "alice", "--directory", cluster.hostport,
                                       "--data-dir", str(cluster.tmp / "peers" / "alice"),
                                       "--register", "--json"],
                         input=b"/msg bob piped\n", capture_output=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert b"ignoring EURECHAT_EOF_LINGER='abc'" in res.stderr
    assert b'"event": "delivered"' in res.stdout
