"""A network namespace joined to this one by a veth pair: a source address
that is not loopback, for tests of the plaintext policy (SPEC §5.1).

The link and its two addresses (a /30 of 10.254.0.0/16, a private range) exist
only while the context is open: the namespace and both ends of the pair are
deleted on exit, whatever happened.  Needs root (CAP_NET_ADMIN), as CI has.

    with VethNamespace() as ns:
        ns.host_ip     # the address on this side (listen here)
        ns.inner_ip    # the source address of connections made from inside
        ns.run([...])  # a command inside the namespace (subprocess.run)
"""

from __future__ import annotations

import os
import subprocess
from typing import List

__all__ = ["VethNamespace"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


class VethNamespace:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000:05d}"
        self.name = f"ectls{tag}"
        self.host_if, self.inner_if = f"ech{tag}", f"eci{tag}"
        octet = os.getpid() % 250
        self.host_ip, self.inner_ip = f"10.254.{octet}.1", f"10.254.{octet}.2"

    def __enter__(self) -> VethNamespace:
        try:
            _ip("netns", "add", self.name)
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.inner_if)
            _ip("link", "set", self.inner_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("-n", self.name, "addr", "add", f"{self.inner_ip}/30", "dev", self.inner_if)
            _ip("-n", self.name, "link", "set", self.inner_if, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def run(self, argv: List[str], **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("timeout", 60)
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], **kwargs)

    def __exit__(self, *exc) -> None:
        for args in (("link", "del", self.host_if), ("netns", "del", self.name)):
            try:
                _ip(*args)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                pass
