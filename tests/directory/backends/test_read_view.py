"""``presence.view.ReadView``: the one read view every registry answers QUERY from."""

from __future__ import annotations

from eurechat.directory.presence.view import ReadView
from eurechat.registration import Registration

BOB = Registration("bob", "127.0.0.1", 2000)
ANN = Registration("ann", "::1", 3000)
CAT = Registration("cat", "127.0.0.1", 4000)


def test_sorted_and_one_tuple_per_name():
    v = ReadView()
    v.put(BOB)
    v.put(ANN)
    assert list(v.query()) == [ANN, BOB] and len(v) == 2
    assert v.query("bob") == (BOB,) and v.query("bob") is v.query("bob")  # no allocation
    assert v.query("nobody") == () and v.get("ann") == ANN and v.get("x") is None


def test_expected_remove():
    v = ReadView()
    v.put(BOB)
    assert not v.discard("bob", expected=Registration("bob", "127.0.0.1", 2001))
    assert v.discard("bob", expected=BOB) and list(v.query()) == []
    assert not v.discard("bob")


def test_lent_list_is_copied_before_the_next_change():
    v = ReadView()
    v.put(BOB)
    lent = v.query()
    v.put(ANN)
    v.discard("bob")
    assert list(lent) == [BOB] and list(v.query()) == [ANN]
    again = v.query()
    assert v.query() is again  # unchanged view: the same list, no copy per QUERY


def test_limit_and_reset():
    v = ReadView()
    v.reset([CAT, BOB, ANN, Registration("bob", "127.0.0.1", 1)])
    assert list(v.query(limit=2)) == [ANN, Registration("bob", "127.0.0.1", 1)]
    assert v.all() == list(v.query()) and len(v) == 3


def test_changes_are_counted_and_announced():
    seen = []
    v = ReadView(on_change=lambda: seen.append(v.version))
    v.put(BOB)
    v.put(BOB)
    v.discard("nobody")
    v.discard("bob")
    v.reset([])
    assert seen == [1, 2, 3, 4]


def test_local_view_sorted_cache_and_expected_remove():
    v = ReadView()
    bob, ann = Registration("bob", "127.0.0.1", 2000), Registration("ann", "::1", 3000)
    v.put(bob)
    v.put(ann)
    assert list(v.query()) == [ann, bob] and v.query("bob") == (bob,)
    assert not v.discard("bob", expected=Registration("bob", "127.0.0.1", 2001))
    assert v.discard("bob", expected=bob) and list(v.query()) == [ann]
