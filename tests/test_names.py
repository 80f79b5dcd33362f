"""``eurechat.names``: the user-name and password rules of directory and peer."""

from __future__ import annotations

import pytest

from eurechat.names import (
    INVALID_PASSWORD,
    INVALID_USERNAME,
    MAX_PASSWORD,
    MIN_PASSWORD,
    check_account,
    valid_password,
    valid_username,
)


@pytest.mark.parametrize("name", ["a", "alice", "_x", "0", "a.b-c_d", "A" * 32])
def test_valid_usernames(name):
    assert valid_username(name)


@pytest.mark.parametrize("name", ["", ".alice", "-alice", "al ice", "al/ice", "a" * 33,
                                  "é", "alice\n", "ａlice"])
def test_invalid_usernames(name):
    assert not valid_username(name)


def test_password_lengths():
    assert not valid_password(b"x" * (MIN_PASSWORD - 1))
    assert valid_password(b"x" * MIN_PASSWORD)
    assert valid_password(b"x" * MAX_PASSWORD)
    assert not valid_password(b"x" * (MAX_PASSWORD + 1))


def test_check_account_names_the_rule_broken_first():
    with pytest.raises(ValueError, match="^invalid username: 1-32 characters"):
        check_account(".bad", b"short")
    with pytest.raises(ValueError) as exc:
        check_account("good", b"short")
    assert str(exc.value) == INVALID_PASSWORD == "invalid password: 8 to 1024 bytes"
    check_account("good", b"long enough")


def test_the_directory_and_the_peer_share_the_rule():
    from eurechat.directory import session
    from eurechat.peer import protocol
    assert protocol.valid_name is valid_username
    assert session.valid_username is valid_username
    assert INVALID_USERNAME == ("invalid username: 1-32 characters of [A-Za-z0-9_.-], "
                                "not starting with '.' or '-'")
