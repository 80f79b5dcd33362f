"""Dialling one recipient on its own: backoff, which address is worth a
dial, and when the user hears about it.  Explicit times; no jitter (the
backoff function is passed in)."""

from __future__ import annotations

from eurechat.peer.dialing import Dialing

A = ("10.0.0.1", 5000)
B = ("10.0.0.2", 5000)


def doubling(attempt: int) -> float:
    """1 s, 2 s, 4 s ... capped at 30 s (what backoff_delay does, jitter aside)."""
    return min(30.0, 1.0 * 2 ** attempt)


def dialing(lookup_interval: float = 3.0) -> Dialing:
    return Dialing(doubling, lookup_interval)


class TestBackoff:
    def test_a_fresh_route_dials_at_once(self):
        assert dialing().first_delay() == 0

    def test_a_retry_before_any_failure_waits_half_the_first_backoff(self):
        assert dialing().delay(0.0, has_directory=False) == doubling(0) / 2

    def test_after_a_failure_it_waits_the_backoff(self):
        d = dialing()
        d.unreachable(queued=True)
        assert d.first_delay() is None
        assert d.delay(now=0.0, has_directory=False) == doubling(0)

    def test_the_backoff_grows_with_each_failure_up_to_the_cap(self):
        d = dialing()
        delays = []
        for _ in range(8):
            d.unreachable(queued=True)
            delays.append(d.delay(0.0, has_directory=False))
        assert delays == [1, 2, 4, 8, 16, 30, 30, 30]

    def test_with_a_directory_the_recipient_is_looked_up_at_least_every_interval(self):
        d = dialing(lookup_interval=3.0)
        for _ in range(6):
            d.unreachable(queued=True)
        assert d.delay(0.0, has_directory=False) == 30
        assert d.delay(0.0, has_directory=True) == 3.0

    def test_only_an_ack_resets_the_backoff(self):
        d = dialing()
        for _ in range(3):
            d.unreachable(queued=True)
        assert d.attempt == 3
        d.proved()
        assert d.attempt == 0 and d.first_delay() == 0


class TestWhichAddress:
    def test_an_address_never_failed_is_dialled(self):
        assert dialing().may_dial(A, now=0.0)

    def test_a_failed_address_waits_for_its_own_backoff(self):
        d = dialing()
        d.failed(A, now=100.0)           # attempt 0: 1 s
        assert not d.may_dial(A, 100.5)
        assert d.may_dial(A, 101.0)

    def test_a_new_address_is_dialled_at_once(self):
        d = dialing()
        d.failed(A, now=100.0)
        assert d.may_dial(B, 100.1)

    def test_the_retry_waits_for_the_failed_address_even_if_the_backoff_is_shorter(self):
        d = Dialing(doubling, 3.0)
        d.failed(A, now=100.0)            # drawn once: 1 s after 100
        assert d.delay(100.0, has_directory=False) == 1.0   # not the 0.5 of no failure yet
        d.unreachable(queued=True)
        assert d.delay(100.0, has_directory=False) == 1.0

    def test_unregistered_in_between_means_a_new_registration(self):
        d = dialing()
        d.failed(A, now=100.0)
        d.unregistered()
        assert d.may_dial(A, 100.1)

    def test_an_ack_forgets_the_failed_address(self):
        d = dialing()
        d.failed(A, now=100.0)
        d.proved()
        assert d.may_dial(A, 100.1) and d.failed_addr is None


class TestALostConnection:
    def test_a_proven_connection_is_redialled_at_once(self):
        d = dialing()
        assert d.lost(A, now=50.0) == 0
        assert d.attempt == 1 and d.may_dial(A, 50.0)

    def test_one_lost_before_any_ack_counts_as_a_failed_dial_of_its_address(self):
        d = dialing()
        d.lost(A, now=50.0)              # proven: at once, counted
        assert d.lost(A, now=51.0) is None   # lost again before an ACK: back off
        assert d.attempt == 2
        assert not d.may_dial(A, 51.5)   # attempt 1: 2 s
        assert d.may_dial(A, 53.0)

    def test_a_connection_the_recipient_dialled_has_no_address_to_hold_back(self):
        d = dialing()
        d.lost(None, 50.0)
        assert d.lost(None, 51.0) is None and d.failed_addr is None


class TestTellingTheUser:
    def test_once_per_outage(self):
        d = dialing()
        assert d.unreachable(queued=True)
        assert not d.unreachable(queued=True)
        d.proved()
        assert d.unreachable(queued=True)

    def test_not_when_nothing_is_queued(self):
        d = dialing()
        assert not d.unreachable(queued=False)
        assert d.attempt == 1
        assert d.unreachable(queued=True)
