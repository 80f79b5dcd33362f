"""The lookup cache and the sightings on their own: explicit times, no
directory (its answers are passed in)."""

from __future__ import annotations

from eurechat.peer.addresses import AddressBook, Sightings

A = ("10.0.0.1", 5000)
B = ("10.0.0.2", 5000)


def book(ttl: float = 2.0, keep: float = 600.0, static=None) -> AddressBook:
    return AddressBook(static if static is not None else {}, ttl, keep)


class TestLookups:
    def test_an_unknown_name_needs_the_directory(self):
        assert book().known("bob", 0.0) == (False, None)

    def test_a_fixed_address_always_answers(self):
        static = {"bob": A}
        b = book(static=static)
        assert b.known("bob", 1e9) == (True, A)
        static["bob"] = B                      # the caller's dict, changed while running
        assert b.known("bob", 1e9) == (True, B)

    def test_an_answer_is_trusted_for_the_ttl(self):
        b = book(ttl=2.0)
        b.note([("bob", A)], now=10.0)
        assert b.known("bob", 11.9) == (True, A)
        assert b.known("bob", 12.0) == (False, None)
        assert b.address("bob") == A

    def test_not_listed_in_a_complete_answer_means_not_registered(self):
        b = book()
        noted = b.note([("carol", B)], now=10.0, complete_for="bob")
        assert noted.unregistered == "bob"
        assert b.known("bob", 10.5) == (True, None)
        assert b.note([("bob", A)], 11.0, complete_for="bob").unregistered is None

    def test_a_listing_without_a_name_asked_says_nothing_of_others(self):
        b = book()
        assert b.note([("carol", B)], 10.0).unregistered is None
        assert b.known("bob", 10.0) == (False, None)


class TestWhoMoved:
    def test_new_and_moved_names_are_reported_unchanged_ones_not(self):
        b = book()
        assert b.note([("bob", A), ("carol", B)], 1.0).moved == ["bob", "carol"]
        assert b.note([("bob", A), ("carol", A)], 2.0).moved == ["carol"]

    def test_back_from_unregistered_is_a_move(self):
        b = book()
        b.note([], 1.0, complete_for="bob")
        assert b.note([("bob", A)], 2.0, complete_for="bob").moved == ["bob"]


class TestTheFallback:
    def test_the_last_address_however_old_is_the_fallback(self):
        b = book(ttl=2.0)
        b.note([("bob", A)], 10.0)
        assert b.known("bob", 1000.0) == (False, None)
        assert b.fallback("bob") == A

    def test_an_expired_entry_is_looked_up_afresh_but_keeps_its_fallback(self):
        b = book(ttl=2.0)
        b.note([("bob", A)], 10.0)
        b.expire("bob")
        assert b.known("bob", 10.1) == (False, None)
        assert b.fallback("bob") == A
        b.expire("nobody")                     # nothing to expire: no entry made
        assert b.fallback("nobody") is None

    def test_a_forgotten_name_has_no_fallback(self):
        b = book()
        b.note([("bob", A)], 10.0)
        b.forget("bob")
        assert b.fallback("bob") is None and b.address("bob") is None

    def test_a_new_directory_link_trusts_no_earlier_answer(self):
        b = book()
        b.note([("bob", A)], 10.0)
        b.clear()
        assert b.known("bob", 10.0) == (False, None) and b.fallback("bob") is None


class TestPruning:
    def test_old_entries_go_unless_wanted(self):
        b = book(keep=600.0)
        b.note([("bob", A), ("ghost", B)], 0.0)
        b.note([("fresh", A)], 500.0)
        assert b.prune(600.0, wanted=lambda n: False) == 0      # not older than keep yet
        assert b.prune(700.0, wanted=lambda n: n == "bob") == 1
        assert set(b.cache) == {"bob", "fresh"}


class TestSightings:
    def test_never_seen_is_none_and_seen_is_rounded_to_the_millisecond(self):
        s = Sightings()
        assert s.last_seen("bob") is None
        s.saw("bob", 1000.123456)
        assert s.last_seen("bob") == 1000.123

    def test_loaded_sightings_are_known_and_already_saved(self):
        s = Sightings({"bob": 100.0}, save_every=600.0)
        assert s.last_seen("bob") == 100.0
        assert not s.saw("bob", 200.0)         # saved 100 s ago: memory only
        assert s.take() == {}

    def test_written_at_most_every_save_every_per_name(self):
        s = Sightings(save_every=600.0)
        assert s.saw("bob", 0.0)
        assert not s.saw("bob", 599.0)
        assert s.saw("bob", 600.0)
        assert s.take() == {"bob": 600.0}
        assert s.take() == {}

    def test_a_failed_write_is_retried_with_the_next_commit(self):
        s = Sightings(save_every=600.0)
        s.saw("bob", 0.0)
        batch = s.take()
        s.saw("carol", 5.0)
        s.not_written(batch)
        assert s.take() == {"carol": 5.0, "bob": 0.0}
        assert s.saw("bob", 10.0)              # not saved after all: due again

    def test_at_shutdown_every_sighting_kept_only_in_memory_is_written(self):
        s = Sightings({"bob": 100.0, "dan": 50.0}, save_every=600.0)
        s.saw("bob", 200.0)                    # saved at 100: kept in memory only
        s.saw("carol", 300.0)
        assert s.take() == {"carol": 300.0}    # went with a commit
        s.saw("bob", 250.0)
        s.save_all()
        assert s.take() == {"bob": 250.0}      # dan and carol are in the store as they are
