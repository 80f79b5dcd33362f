"""``accounts.hashing``: argon2id records at (at least) the SPEC §5.3 cost,
scrypt records still verified, damaged records never matching."""

from __future__ import annotations

import pytest

from eurechat.directory.accounts import hashing
from eurechat.directory.accounts.hashing import (
    check_password,
    hash_password,
    hash_scrypt,
    needs_rehash,
    verify_password,
)


def _params(record: str) -> dict:
    # $argon2id$v=19$m=19456,t=2,p=1$salt$hash
    return {k: int(v) for k, v in (p.split("=") for p in record.split("$")[3].split(","))}


def test_production_cost_is_at_least_19_mib_two_passes_one_lane(monkeypatch):
    monkeypatch.delenv("EURECHAT_ARGON2_MEMORY_KIB", raising=False)
    record = hash_password(b"a real password")
    assert record.startswith("$argon2id$v=19$")
    params = _params(record)
    assert params["m"] >= 19 * 1024 and params["t"] >= 2 and params["p"] == 1
    assert verify_password(b"a real password", record) == (True, False)


def test_the_test_cost_is_an_explicit_override(monkeypatch):
    monkeypatch.setenv("EURECHAT_ARGON2_MEMORY_KIB", "64")
    assert _params(hash_password(b"a real password"))["m"] == 64
    monkeypatch.setenv("EURECHAT_ARGON2_MEMORY_KIB", "4")
    with pytest.raises(ValueError):
        hash_password(b"a real password")


def test_salted_records_check_the_password():
    a, b = hash_password(b"same password"), hash_password(b"same password")
    assert a != b
    assert check_password(b"same password", a) and check_password(b"same password", b)
    assert not check_password(b"same passwore", a)


def test_scrypt_records_verify_and_ask_to_be_rewritten():
    old = hash_scrypt(b"old password", 16)
    assert old.startswith("scrypt$16$8$1$")
    assert verify_password(b"old password", old) == (True, True)
    assert verify_password(b"other password", old) == (False, False)
    assert needs_rehash(old)


def test_other_parameters_ask_to_be_rewritten(monkeypatch):
    monkeypatch.setenv("EURECHAT_ARGON2_MEMORY_KIB", "64")
    record = hash_password(b"some password")
    assert not needs_rehash(record)
    monkeypatch.setenv("EURECHAT_ARGON2_MEMORY_KIB", "128")
    assert needs_rehash(record)
    assert verify_password(b"some password", record) == (True, True)


@pytest.mark.parametrize("record", [
    "", "garbage", "garbage$record", "scrypt$x$8$1$00$00", "scrypt$16$8$1$zz$00",
    "$argon2id$v=19$m=64,t=2,p=1$c2FsdHNhbHQ$notbase64!", "$argon2i$v=19$m=64,t=2,p=1$AAAA$AAAA",
    "$argon2d$v=19$m=64,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
])
def test_damaged_or_foreign_records_never_match(record):
    assert verify_password(b"any password", record) == (False, False)


def test_a_huge_password_is_cut_before_hashing():
    record = hash_password(b"x" * 1024)
    assert check_password(b"x" * 1024 + b"ignored beyond the limit", record)
    assert hashing.MAX_PASSWORD == 1024


def test_password_record_salted_and_checked():
    a, b = hash_password(b"same password"), hash_password(b"same password")
    assert a != b and a.startswith("$argon2id$")
    assert check_password(b"same password", a) and not check_password(b"other", a)
    assert not check_password(b"x", "garbage$record")
    old = hash_scrypt(b"same password", 16)
    assert check_password(b"same password", old) and not check_password(b"other", old)
