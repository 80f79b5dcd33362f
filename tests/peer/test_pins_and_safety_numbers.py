"""Pins (trust on first use) and safety numbers, without sockets (SPEC §5.4)."""

from __future__ import annotations

import os
import stat

from cryptography.hazmat.primitives.asymmetric import ed25519

from eurechat.peer.pins import Pins
from eurechat.peer.safety import format_safety_number, safety_number
from eurechat.tls.fingerprint import fingerprint


def _fp() -> str:
    return fingerprint(ed25519.Ed25519PrivateKey.generate().public_key())


class TestFirstUse:
    def test_first_key_is_pinned_and_reported_as_first(self, tmp_path):
        pins, key = Pins(tmp_path, "alice"), _fp()
        check = pins.check("bob", key)
        assert check.first and not check.changed and pins.get("bob") == key

    def test_same_key_again_is_quiet(self, tmp_path):
        pins, key = Pins(tmp_path, "alice"), _fp()
        pins.check("bob", key)
        check = pins.check("bob", key)
        assert not check.first and not check.changed

    def test_pins_survive_a_restart_and_the_file_is_private(self, tmp_path):
        key = _fp()
        Pins(tmp_path, "alice").check("bob", key)
        assert Pins(tmp_path, "alice").get("bob") == key
        assert stat.S_IMODE(os.stat(tmp_path / "known_peers").st_mode) == 0o600


class TestKeyChange:
    def test_another_key_is_a_change_and_does_not_replace_the_pin(self, tmp_path):
        pins, old, new = Pins(tmp_path, "alice"), _fp(), _fp()
        pins.check("bob", old)
        check = pins.check("bob", new)
        assert check.changed and check.old == old and check.fingerprint == new
        assert pins.get("bob") == old and pins.pending("bob") == new

    def test_the_change_is_remembered_across_a_restart(self, tmp_path):
        old, new = _fp(), _fp()
        pins = Pins(tmp_path, "alice")
        pins.check("bob", old)
        pins.check("bob", new)
        again = Pins(tmp_path, "alice")
        assert again.get("bob") == old and again.pending("bob") == new
        assert again.check("bob", new).changed

    def test_trust_accepts_the_pending_key(self, tmp_path):
        pins, old, new = Pins(tmp_path, "alice"), _fp(), _fp()
        pins.check("bob", old)
        pins.check("bob", new)
        assert pins.trust("bob") == new
        assert pins.get("bob") == new and pins.pending("bob") is None
        assert not pins.check("bob", new).changed
        assert pins.check("bob", old).changed

    def test_trust_of_an_unknown_name_does_nothing(self, tmp_path):
        assert Pins(tmp_path, "alice").trust("nobody") is None


class TestLocalUsersAreSeparate:
    def test_two_local_users_keep_their_own_pins_in_one_file(self, tmp_path):
        k1, k2 = _fp(), _fp()
        Pins(tmp_path, "alice").check("carol", k1)
        Pins(tmp_path, "bob").check("carol", k2)
        assert Pins(tmp_path, "alice").get("carol") == k1
        assert Pins(tmp_path, "bob").get("carol") == k2

    def test_a_damaged_line_is_ignored_not_fatal(self, tmp_path):
        key = _fp()
        (tmp_path / "known_peers").write_text(f"garbage\nalice bob {key} trusted\nalice x y z\n")
        assert Pins(tmp_path, "alice").get("bob") == key


class TestSafetyNumber:
    def test_same_on_both_sides(self):
        a, b = ("alice", _fp()), ("bob", _fp())
        assert safety_number(a, b) == safety_number(b, a)

    def test_sixty_digits_in_twelve_groups(self):
        number = safety_number(("alice", _fp()), ("bob", _fp()))
        assert len(number) == 60 and number.isdigit()
        groups = format_safety_number(number).split(" ")
        assert len(groups) == 12 and all(len(g) == 5 for g in groups)

    def test_changes_with_either_key_and_with_the_name(self):
        a, b = ("alice", _fp()), ("bob", _fp())
        base = safety_number(a, b)
        assert safety_number(("alice", _fp()), b) != base
        assert safety_number(a, ("bob", _fp())) != base
        assert safety_number(a, ("carol", b[1])) != base

    def test_deterministic(self):
        a, b = ("alice", "sha256:" + "A" * 43), ("bob", "sha256:" + "B" * 43)
        assert safety_number(a, b) == safety_number(a, b)
