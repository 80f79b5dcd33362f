"""The liveness rule on its own: times and byte counts in, verdicts out."""

from __future__ import annotations

from eurechat.peer.liveness import Liveness, Verdict


class TestVerdicts:
    def test_verdicts_are_an_enum_and_the_class_names_them(self):
        assert set(Verdict) == {Verdict.OK, Verdict.PROBE, Verdict.DEAD}
        assert (Liveness.OK, Liveness.PROBE, Liveness.DEAD) == (
            Verdict.OK, Verdict.PROBE, Verdict.DEAD)


class TestProbe:
    def test_an_idle_connection_is_never_probed(self):
        live = Liveness(10, 5)
        assert live.check(1000.0, False, last_rx=0.0, tx_since=0.0) is Verdict.OK
        assert not live.probing

    def test_the_wait_counts_from_the_first_write_that_owes_an_answer(self):
        live = Liveness(10, 5)
        assert live.check(109.0, True, last_rx=0.0, tx_since=100.0) is Verdict.OK
        assert live.check(110.5, True, last_rx=0.0, tx_since=100.0) is Verdict.PROBE
        assert live.probing and live.probe_at == 110.5

    def test_recent_traffic_is_not_silence(self):
        live = Liveness(10, 5)
        assert live.check(50.0, True, last_rx=45.0, tx_since=30.0) is Verdict.OK

    def test_zero_ack_timeout_turns_probing_off(self):
        assert Liveness(0, 5).check(1e6, True, 0.0, 0.0) is Verdict.OK
        assert not Liveness(0, 5).due(1e6, True, 0.0, 0.0)

    def test_due_says_when_the_byte_counts_are_needed(self):
        live = Liveness(10, 5)
        assert not live.due(5.0, True, 0.0, 0.0)
        assert live.due(10.5, True, 0.0, 0.0)
        assert not live.due(10.5, False, 0.0, 0.0)


class TestGiveUp:
    def test_an_unanswered_probe_is_dead_after_ping_timeout(self):
        live = Liveness(10, 5)
        assert live.check(11.0, True, 0.0, 0.0) is Verdict.PROBE
        assert live.check(16.0, True, 0.0, 0.0) is Verdict.OK
        assert live.check(16.5, True, 0.0, 0.0) is Verdict.DEAD

    def test_anything_received_after_the_probe_answers_it(self):
        live = Liveness(10, 5)
        assert live.check(11.0, True, last_rx=0.0, tx_since=0.0) is Verdict.PROBE
        assert live.check(12.0, True, last_rx=11.5, tx_since=11.0) is Verdict.OK
        assert not live.probing
        assert live.check(22.0, True, last_rx=11.5, tx_since=11.0) is Verdict.PROBE

    def test_a_slow_link_still_draining_restarts_the_probe_clock(self):
        live = Liveness(10, 5)
        assert live.check(11.0, True, 0.0, 0.0, delivered=1000, outstanding=9000) is Verdict.PROBE
        assert live.check(17.0, True, 0.0, 0.0, delivered=4000, outstanding=6000) is Verdict.OK
        assert live.check(21.0, True, 0.0, 0.0, delivered=9000, outstanding=1000) is Verdict.OK
        assert live.check(26.5, True, 0.0, 0.0, delivered=9000, outstanding=1000) is Verdict.DEAD

    def test_bytes_taken_with_nothing_outstanding_are_no_reprieve(self):
        live = Liveness(10, 5)
        assert live.check(11.0, True, 0.0, 0.0, delivered=100, outstanding=0) is Verdict.PROBE
        assert live.check(16.5, True, 0.0, 0.0, delivered=120, outstanding=0) is Verdict.DEAD


class TestProbeNow:
    def test_a_doubted_connection_is_probed_at_once_and_judged_from_then(self):
        live = Liveness(10, 5)
        assert live.probe_now(100.0, delivered=500)
        assert live.probing and live.delivered == 500
        assert live.check(104.0, False, last_rx=0.0, tx_since=0.0, delivered=500) is Verdict.OK
        assert live.check(105.5, False, 0.0, 0.0, delivered=500) is Verdict.DEAD

    def test_not_twice(self):
        live = Liveness(10, 5)
        assert live.probe_now(100.0, 0)
        assert not live.probe_now(101.0, 0)
        assert live.probe_at == 100.0

    def test_an_answer_clears_it(self):
        live = Liveness(10, 5)
        live.probe_now(100.0, 0)
        assert live.check(101.0, False, last_rx=100.5, tx_since=0.0) is Verdict.OK
        assert not live.probing


def test_the_liveness_rule():
    """``Liveness`` on its own: times in, verdicts out."""
    ok, probe, dead = Liveness.OK, Liveness.PROBE, Liveness.DEAD
    live = Liveness(ack_timeout=10, ping_timeout=5)
    # Idle (nothing in flight): never probed, however long the silence.
    assert live.check(1000.0, False, last_rx=0.0, tx_since=0.0) == ok
    # Sent at 100 on a connection silent since 0: the clock starts at the send.
    assert live.check(109.0, True, last_rx=0.0, tx_since=100.0) == ok
    assert live.check(110.5, True, last_rx=0.0, tx_since=100.0) == probe
    assert live.check(115.0, True, last_rx=0.0, tx_since=110.5) == ok    # waiting for it
    assert live.check(116.0, True, last_rx=0.0, tx_since=110.5) == dead
    # Anything received after the probe answers it; the wait starts again.
    live = Liveness(10, 5)
    assert live.check(11.0, True, last_rx=0.0, tx_since=0.0) == probe
    assert live.check(12.0, True, last_rx=11.5, tx_since=11.0) == ok
    assert live.check(21.0, True, last_rx=11.5, tx_since=11.0) == ok
    assert live.check(22.0, True, last_rx=11.5, tx_since=11.0) == probe
    # Received recently, and we keep writing: not silent.
    live = Liveness(10, 5)
    assert live.check(50.0, True, last_rx=45.0, tx_since=30.0) == ok
    # Our bytes ahead of the PING still draining (a slow link): its clock restarts.
    live = Liveness(10, 5)
    assert live.check(11.0, True, 0.0, 0.0, delivered=1000, outstanding=9000) == probe
    assert live.check(17.0, True, 0.0, 0.0, delivered=4000, outstanding=6000) == ok
    assert live.check(21.0, True, 0.0, 0.0, delivered=9000, outstanding=1000) == ok
    assert live.check(25.0, True, 0.0, 0.0, delivered=9000, outstanding=1000) == ok
    assert live.check(26.5, True, 0.0, 0.0, delivered=9000, outstanding=1000) == dead
    # Nothing outstanding (all taken by the remote TCP, e.g. a middlebox): no reprieve.
    live = Liveness(10, 5)
    assert live.check(11.0, True, 0.0, 0.0, delivered=100, outstanding=0) == probe
    assert live.check(16.5, True, 0.0, 0.0, delivered=120, outstanding=0) == dead
    # ack_timeout 0: probing off.
    assert Liveness(0, 5).check(1e6, True, 0.0, 0.0) == ok
