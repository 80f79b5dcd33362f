"""``eurechat.backoff``: the one retry delay of the directory and the peer."""

from __future__ import annotations

import pytest

from eurechat.backoff import RECONNECT_JITTER, Backoff, delay, jittered_delay


def test_delay_doubles_from_base_up_to_cap():
    assert [delay(a, 0.1, 1.0) for a in range(6)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_delay_of_a_huge_attempt_is_the_cap_not_an_overflow():
    assert delay(10**9, 0.25, 30.0) == 30.0


def test_jitter_draws_between_the_lower_bound_and_the_full_delay():
    assert delay(3, 1.0, 100.0, jitter=0.5, rng=lambda: 0.0) == 8.0
    assert delay(3, 1.0, 100.0, jitter=0.5, rng=lambda: 0.999999) == pytest.approx(4.0, abs=1e-5)
    assert delay(3, 1.0, 100.0, jitter=1.0, rng=lambda: 0.5) == 4.0


def test_jittered_delay_stays_within_its_band_and_varies():
    draws = [jittered_delay(2, 0.25, 30.0) for _ in range(200)]
    assert all((1 - RECONNECT_JITTER) * 1.0 <= d <= 1.0 for d in draws)
    assert len(set(draws)) > 1


@pytest.mark.parametrize("attempt, jitter", [(-1, 0.0), (0, -0.1), (0, 1.5)])
def test_nonsense_arguments_are_refused(attempt, jitter):
    with pytest.raises(ValueError):
        delay(attempt, 0.1, 1.0, jitter=jitter)


def test_backoff_counts_failures_and_resets_on_success():
    b = Backoff(0.05, 0.3)
    assert [b.next() for _ in range(5)] == pytest.approx([0.05, 0.1, 0.2, 0.3, 0.3])
    assert b.failures == 5
    b.reset()
    assert b.failures == 0 and b.next() == pytest.approx(0.05)


def test_backoff_with_jitter_uses_its_rng():
    b = Backoff(1.0, 10.0, jitter=0.5, rng=lambda: 1.0)
    assert b.next() == 0.5 and b.next() == 1.0


def test_backoff_refuses_a_cap_below_its_base():
    with pytest.raises(ValueError):
        Backoff(1.0, 0.5)
    with pytest.raises(ValueError):
        Backoff(0.1, 1.0, jitter=2.0)
