"""The pair rule on its own: which of two connections between the same two
peers is kept, and how the other one goes."""

from __future__ import annotations

import itertools

import pytest

from eurechat.peer.pairing import Settlement, settle


class TestBothDialledAtOnce:
    def test_the_connection_dialled_by_the_smaller_name_is_kept(self):
        # alice < bob.  At alice: current dialled by her, new one by bob.
        assert settle("alice", "bob", current_dialled=True, new_dialled=False).keep_new is False
        assert settle("alice", "bob", current_dialled=False, new_dialled=True).keep_new is True
        # At bob: the one alice dialled is the one he did not.
        assert settle("bob", "alice", current_dialled=True, new_dialled=False).keep_new is True
        assert settle("bob", "alice", current_dialled=False, new_dialled=True).keep_new is False

    @pytest.mark.parametrize("current_mine", [True, False])
    def test_both_sides_keep_the_same_connection(self, current_mine):
        # The same two connections, seen from each end: "dialled" flips.
        at_alice = settle("alice", "bob", current_mine, not current_mine)
        at_bob_current_is_alices = settle("bob", "alice", not current_mine, current_mine)
        kept_at_alice = "new" if at_alice.keep_new else "current"
        kept_at_bob = "new" if at_bob_current_is_alices.keep_new else "current"
        assert kept_at_alice == kept_at_bob

    def test_the_loser_is_closed_gracefully_and_a_kept_older_one_probed(self):
        rule = settle("alice", "bob", current_dialled=True, new_dialled=False)
        assert rule == Settlement(keep_new=False, abort_loser=False, probe_kept=True)
        rule = settle("alice", "bob", current_dialled=False, new_dialled=True)
        assert rule == Settlement(keep_new=True, abort_loser=False, probe_kept=False)


class TestTheSameSideDialledBoth:
    @pytest.mark.parametrize("me,them,dialled", list(itertools.product(
        ["alice", "bob"], ["bob", "carol"], [True, False])))
    def test_the_newer_is_kept_and_the_older_aborted(self, me, them, dialled):
        rule = settle(me, them, current_dialled=dialled, new_dialled=dialled)
        assert rule == Settlement(keep_new=True, abort_loser=True, probe_kept=False)
