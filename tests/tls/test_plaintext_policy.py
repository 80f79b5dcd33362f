"""Where plaintext is allowed (SPEC §5.1): the pure policy function."""

from __future__ import annotations

import pytest

from eurechat.tls.policy import Plaintext, allows, is_loopback

LOOPBACK = ["127.0.0.1", "127.8.9.10", "127.255.255.254", "::1", "::ffff:127.0.0.1",
            "::ffff:127.3.2.1"]
REMOTE = ["10.0.0.1", "192.168.1.5", "8.8.8.8", "::ffff:10.0.0.1", "fe80::1", "2001:db8::1",
          "0.0.0.0", "::", "128.0.0.1", "", "localhost", "garbage"]


@pytest.mark.parametrize("ip", LOOPBACK)
def test_loopback_sources(ip):
    assert is_loopback(ip)
    assert allows(Plaintext.LOOPBACK, ip)
    assert allows(Plaintext.ON, ip)
    assert not allows(Plaintext.OFF, ip)


@pytest.mark.parametrize("ip", REMOTE)
def test_other_sources_need_on(ip):
    assert not is_loopback(ip)
    assert not allows(Plaintext.LOOPBACK, ip)
    assert allows(Plaintext.ON, ip)
    assert not allows(Plaintext.OFF, ip)


def test_policy_names():
    assert [p.value for p in Plaintext] == ["off", "loopback", "on"]
    assert Plaintext.parse("loopback") is Plaintext.LOOPBACK
    with pytest.raises(ValueError, match="expected off, loopback or on"):
        Plaintext.parse("yes")
