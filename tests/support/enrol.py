"""Enrolment without the peer: a test signs a peer's identity key up with
the directory (``CERT``, SPEC §5.3) and keeps the chain where the peer looks
for it (``<data-dir>/<user>.crt``), and reads the directory's answers in the
``eurechat/2`` dialect (``QUERY`` lines with the key's fingerprint).

- ``enrol(directory, data_dir, user, password, register=True, reset=False)``:
  the fingerprint of the enrolled key (the peer's ``identity.key``, created if
  missing; with ``reset`` a new one)
- ``v2_session(directory, user, password, register=False)``: a logged-in
  TLS session after ``HELLO 0 eurechat/2`` (``QUERY`` lines carry the
  fingerprint); with ``request_until`` it waits for a listing
"""

from __future__ import annotations

from pathlib import Path

from eurechat.framing import Message
from eurechat.peer.credentials import certificate_request, save_chain
from eurechat.peer.identity import load_identity_key
from eurechat.tls.fingerprint import fingerprint
from support.client import FramedClient
from support.tls import ca_pem_of, trusting

__all__ = ["enrol", "v2_session"]


def v2_session(directory, user: str, password: str, register: bool = False) -> FramedClient:
    c = FramedClient(*directory.address, tls=trusting(ca_pem_of(directory.data_dir)))
    assert c.request("HELLO", "eurechat/2") == Message("ACK", (), "eurechat/2")
    if register:
        assert c.request("REGISTER", user, payload=password).type == "ACK"
    assert c.request("USER", user).type == "ACK"
    assert c.request("PASS", payload=password) == Message("ACK", (), "successfully authenticated")
    return c


def enrol(directory, data_dir, user: str, password: str, register: bool = True,
          reset: bool = False) -> str:
    """``reset``: a new identity key replaces the enrolled one (``CERT reset``)."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    if reset:
        (Path(data_dir) / "identity.key").unlink()
    key = load_identity_key(data_dir)
    with v2_session(directory, user, password, register) as c:
        reply = c.request("CERT", *(("reset",) if reset else ()),
                          payload=certificate_request(key))
    assert reply.type == "RESULT", reply
    save_chain(data_dir, user, reply.payload)
    return fingerprint(key.public_key())

