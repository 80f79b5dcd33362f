"""Where plaintext is allowed (SPEC §5.1): ``--plaintext off|loopback|on``.

Why a policy at all: the plaintext framing is what a person types into
``nc`` and what the seed course's peers speak, and both must keep working on
the machine itself; on any other link a password in clear is readable by
everyone on the path.  ``loopback`` (the default) is the line between the two.
"""

from __future__ import annotations

import enum
import ipaddress

__all__ = ["Plaintext", "allows", "is_loopback"]


class Plaintext(str, enum.Enum):
    """Which sources may use the plaintext framing."""

    OFF = "off"            # nobody: TLS only
    LOOPBACK = "loopback"  # 127.0.0.0/8, ::1 and IPv4-mapped 127.x
    ON = "on"              # everyone (a trusted network, or a test)

    @classmethod
    def parse(cls, text: str) -> Plaintext:
        """The policy named ``text``; ValueError naming the choices otherwise."""
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"invalid plaintext policy {text!r}: "
                             "expected off, loopback or on") from None


def is_loopback(source_ip: str) -> bool:
    """Whether ``source_ip`` (text, as ``getpeername`` gives it) is this machine's
    loopback: 127.0.0.0/8, ``::1``, or ``::ffff:127.x.y.z`` (an IPv4 client of a
    dual-stack socket).  Anything unparsable is not loopback."""
    text = source_ip.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def allows(policy: Plaintext, source_ip: str) -> bool:
    """Whether a plaintext session from ``source_ip`` is allowed under ``policy``."""
    if policy is Plaintext.ON:
        return True
    if policy is Plaintext.OFF:
        return False
    return is_loopback(source_ip)
