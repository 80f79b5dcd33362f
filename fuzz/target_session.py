"""Fuzz target: the directory's sans-IO session (``eurechat.directory.session``).

The fuzzer plays both the client and the server's back end: it sends bytes,
asks for replies with a byte budget, hands effects (password check, account
creation, BIND probe, LEAVE) a fake outcome, and fires timeouts.  Two
sessions run the same program, one on each framing implementation, and must
write exactly the same bytes.  Invariants checked after every call:

* nothing raises, except ``resume()`` with no effect pending (RuntimeError,
  documented);
* what is written is whole, well-formed frames of the four reply types, at
  most ``budget`` plus one reply per ``step``, and the whole conversation's
  output stays within a fixed multiple of its input;
* an effect is asked for only in the state that allows it, with checked
  fields (a BIND of the session's own user, an allowed address and port; a
  login by certificate only for the user the session's certificate names,
  with its key; CERT only in TLS, for the session's user, a rotation
  authorised only by that user's own certificate); READY only after a
  successful password or certificate check; the payload limit is the
  pre-authentication one until then;
* once closed, a session stays closed: every later call writes nothing and
  asks for nothing;
* what ``--trace`` logs of ``PASS`` and ``REGISTER`` shows no password.

Input layout (``seed()`` writes it): byte 0 is the configuration (bit 0
registration closed, bit 1 ``bind_policy=any``, bit 2 the registry is down,
bits 3-4 the client's source address, bit 5 small payload limits, bit 6 a
37-byte ``DECODE_SLICE``, bit 7 ``query_limit=1``); byte 1 the transport
(bit 0 TLS, bits 1-2 the verified client certificate it was opened with:
none, alice's, mallory's, one naming no user); then operations, each
an opcode byte (low 3 bits) and its operand:

====  ==========================================================
op    meaning
====  ==========================================================
0-2   feed: length byte, that many bytes; ``receive`` + ``step``
3     ``step(budget)``, budget = (operand + 1) * 4
4     ``resume`` with ``Result`` number operand % 6
5     ``timeout``: operand bit 0 ``auth``, else ``frame``
6     ``receive`` only: length byte, that many bytes
7     feed all the remaining bytes at once
====  ==========================================================
"""

from __future__ import annotations

import sys

import common
from common import Finding, Reader, check

common.instrumented_imports(["eurechat.directory.session", "eurechat.fallback",
                             "eurechat.rules", "eurechat.message"])

from eurechat.directory import session as session_module  # noqa: E402
from eurechat.directory.interfaces import Registration, RegistryUnavailable  # noqa: E402
from eurechat.directory.session import (  # noqa: E402
    Authenticate,
    Bind,
    CertLogin,
    Enrol,
    Leave,
    PeerCertificate,
    Register,
    Result,
    Session,
    SessionConfig,
    State,
    normalize_ip,
    valid_password,
    valid_username,
)

PURE, COMPILED = common.decoders()
RESULTS = list(Result)
SOURCES = ["127.0.0.1", "::ffff:127.0.0.1", "::1", "10.0.0.7"]
REGS = (Registration("alice", "127.0.0.2", 5000), Registration("bob", "127.0.0.1", 6000),
        Registration("zed", "::1", 7000))
BY_NAME = {r.name: (r,) for r in REGS}
DEFAULT_SLICE = session_module.DECODE_SLICE
REPLY_TYPES = {"ACK", "ERR", "RESULT", "PONG"}
#: What CACERT answers: short, so that its reply stays within the output bound.
CA_PEM = b"-----BEGIN CERTIFICATE-----\nZnV6eg==\n-----END CERTIFICATE-----\n"


class Registry:
    """The presence view the session reads: three users, or down."""

    def __init__(self, down: bool) -> None:
        self.down = down

    def __call__(self, name=None):
        if self.down:
            raise RegistryUnavailable("down")
        if name is None:
            return REGS
        return BY_NAME.get(name, ())


#: Client certificates a TLS session may have been opened with (byte 1, bits 1-2).
CERTS = [None, PeerCertificate("alice", "sha256:" + "A" * 43),
         PeerCertificate("mallory", "sha256:" + "M" * 43), PeerCertificate(None, "sha256:" + "D" * 43)]
#: What the back end answers an Enrol with (short: within the output bound).
CHAIN = b"-----BEGIN CERTIFICATE-----\nY2hhaW4=\n-----END CERTIFICATE-----\n"


def seed(ops, config: int = 0, transport: int = 0) -> bytes:
    """An input for this target from ``[("feed", bytes) | ("resume", Result) |
    ("step", budget) | ("timeout", "auth"|"frame") | ("receive", bytes)]``."""
    out = bytearray([config, transport])
    for op, arg in ops:
        if op in ("feed", "receive"):
            code = 0 if op == "feed" else 6
            for i in range(0, max(len(arg), 1), 255):
                part = arg[i:i + 255]
                out += bytes([code, len(part)]) + part
        elif op == "resume":
            out += bytes([4, RESULTS.index(arg)])
        elif op == "step":
            out += bytes([3, max(0, min(255, arg // 4 - 1))])
        elif op == "timeout":
            out += bytes([5, 1 if arg == "auth" else 0])
        else:
            raise ValueError(op)
    return bytes(out)


class Driven:
    """One session under the fuzzer's program, with the checks that need its history."""

    def __init__(self, decoder_cls, config: SessionConfig, registry: Registry,
                 source: str, tls: bool, cert) -> None:
        self.traced: list = []
        self.s = Session(config, registry, source, trace=self._trace)
        self.s.tls = tls
        self.s.peer_cert = cert
        self.s.decoder = decoder_cls(config.preauth_max_payload, config.max_header,
                                     config.max_args)
        self.config = config
        self.source = source
        self.authed = False
        self.by_password = False
        self.closed = False
        self.total_in = 0
        self.total_out = 0
        self.max_reply = config.max_header + 256 + len(b"\n".join(r.line().encode()
                                                                  for r in REGS)) + 32

    def _trace(self, direction: str, frame: bytes) -> None:
        """``--trace``: what it logs of a request never shows a password."""
        [item] = common.frames(frame)
        if item.type in ("PASS", "REGISTER"):
            secret_args = item.args[1:] if item.type == "REGISTER" else item.args
            check(set(item.payload) <= {ord("*")} and all(a == "*****" for a in secret_args),
                  f"--trace shows a password: {frame!r}")
        self.traced.append((direction, item.type))

    def call(self, op: int, arg) -> tuple:
        s = self.s
        state_before = s.state
        waiting = s.waiting
        budget = 1 << 62
        if op == "receive":
            self.total_in += len(arg)
            s.receive(arg)
            out = None
        elif op == "feed":
            self.total_in += len(arg)
            out = s.feed(arg)
        elif op == "step":
            budget = arg
            out = s.step(budget)
        elif op == "resume":
            if waiting is None:
                try:
                    s.resume(arg)
                except RuntimeError:
                    return ("no effect pending",)
                raise Finding("resume() without a pending effect did not raise")
            detail = b""
            if isinstance(waiting, Enrol):
                detail = CHAIN if arg is Result.OK else b"key mismatch (fuzz)"
            out = s.resume(arg, detail=detail)
            if isinstance(waiting, (Authenticate, CertLogin)) and arg is Result.OK:
                self.authed = True
                self.by_password = isinstance(waiting, Authenticate)
        else:
            out = s.timeout(arg)
        self.verify(out, budget, state_before)
        if out is None:
            return ("received", s.state.value, s.pending, s.has_input)
        return (out.data, out.close, out.effect, s.state.value)

    def verify(self, out, budget: int, state_before: State) -> None:
        s = self.s
        if self.closed:
            check(s.state is State.CLOSED and s.waiting is None and not s.has_input,
                  "a closed session came back to life")
            if out is not None:
                check(out.data == b"" and not out.close and out.effect is None,
                      f"a closed session still writes or acts: {out!r}")
            return
        if s.state is State.CLOSED:
            self.closed = True
            check(s.waiting is None, "closed with an effect pending")
        if s.state is State.READY:
            check(self.authed, "READY without a successful password or certificate check")
            check(s.by_password == self.by_password,
                  f"by_password {s.by_password} after a login by "
                  f"{'password' if self.by_password else 'certificate'}")
            check(s.decoder.max_payload == self.config.max_payload,
                  "authenticated session kept the pre-authentication payload limit")
        elif not self.closed:
            check(s.decoder.max_payload == self.config.preauth_max_payload,
                  f"payload limit {s.decoder.max_payload} before authentication")
        if out is None:
            return
        if out.close:
            check(s.state is State.CLOSED, "asked to close but the session is not closed")
            check(out.effect is None, "an effect together with close")
        self.total_out += len(out.data)
        check(len(out.data) <= budget + self.max_reply,
              f"step({budget}) wrote {len(out.data)} bytes")
        check(self.total_out <= 256 + 12 * self.total_in,
              f"wrote {self.total_out} bytes for {self.total_in} received")
        for item in common.frames(out.data):
            check(item.type in REPLY_TYPES, f"unexpected reply type {item.type}")
        effect = out.effect
        if effect is None:
            return
        check(s.waiting is effect, "the effect returned is not the one pending")
        if isinstance(effect, Authenticate):
            check(s.state is State.AUTH and effect.name == (s.user or ""),
                  f"password check in state {s.state} for {effect.name!r}")
        elif isinstance(effect, Register):
            check(s.state is State.NEW and self.config.registration_open,
                  f"registration in state {s.state}")
            check(valid_username(effect.name) and valid_password(effect.password),
                  f"invalid account reached the store: {effect.name!r}")
        elif isinstance(effect, Bind):
            reg = effect.registration
            check(s.state is State.READY and reg.name == s.user, f"BIND of {reg!r}")
            check(1024 <= reg.port <= 65535, f"BIND port {reg.port}")
            check(normalize_ip(reg.address) == reg.address, f"BIND address {reg.address!r}")
            if self.config.bind_policy != "any":
                check(reg.address == (normalize_ip(self.source) or self.source),
                      f"BIND of a foreign address {reg.address} from {self.source}")
        elif isinstance(effect, Leave):
            check(s.state is State.READY and effect.name == s.user, "LEAVE before login")
        elif isinstance(effect, CertLogin):
            # Only the user the session's verified certificate names, with its key.
            cert = s.peer_cert
            check(s.state is State.AUTH and s.tls and cert is not None
                  and cert.user == effect.name == s.user
                  and effect.fingerprint == cert.fingerprint,
                  f"{effect!r} with certificate {cert!r} in state {s.state}")
        elif isinstance(effect, Enrol):
            cert = s.peer_cert
            check(s.state is State.READY and s.tls and effect.name == s.user,
                  f"CERT for {effect.name!r} in state {s.state} (tls={s.tls})")
            # A rotation is authorised only by a certificate of this very user.
            check(effect.session_key is None or (
                cert is not None and cert.user == s.user
                and effect.session_key == cert.fingerprint),
                f"{effect!r} authorised by {cert!r}")
            check(effect.by_password == self.by_password,
                  f"{effect!r} after a login by {'password' if self.by_password else 'cert'}")
        else:
            raise Finding(f"unknown effect {effect!r}")


def program(r: Reader) -> list:
    ops: list = []
    while r.left:
        code = r.byte() & 7
        if code <= 2:
            ops.append(("feed", r.take(r.byte())))
        elif code == 3:
            ops.append(("step", (r.byte() + 1) * 4))
        elif code == 4:
            ops.append(("resume", RESULTS[r.byte() % len(RESULTS)]))
        elif code == 5:
            ops.append(("timeout", "auth" if r.byte() & 1 else "frame"))
        elif code == 6:
            ops.append(("receive", r.take(r.byte())))
        else:
            ops.append(("feed", r.rest()))
    # Then as a server would: answer everything, every effect succeeding.
    for _ in range(8):
        ops.append(("resume", Result.OK))
    ops.append(("step", 1 << 62))
    return ops


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris calls
    r = Reader(data)
    flags = r.byte()
    small = bool(flags & 32)
    config = SessionConfig(
        registration_open=not flags & 1,
        bind_policy="any" if flags & 2 else "own",
        max_payload=256 if small else 64 * 1024,
        preauth_max_payload=16 if small else 4 * 1024,
        query_limit=1 if flags & 128 else 10_000,
        ca_pem=CA_PEM,
    )
    transport = r.byte()
    tls = bool(transport & 1)
    cert = CERTS[(transport >> 1) & 3] if tls else None
    source = SOURCES[(flags >> 3) & 3]
    registry = Registry(bool(flags & 4))
    session_module.DECODE_SLICE = 37 if flags & 64 else DEFAULT_SLICE
    try:
        ops = program(r)
        pure = Driven(PURE, config, registry, source, tls, cert)
        compiled = Driven(COMPILED, config, registry, source, tls, cert)
        for index, (op, arg) in enumerate(ops):
            a = pure.call(op, arg)
            b = compiled.call(op, arg)
            check(a == b, f"op {index} {op} {arg!r}: the framing twins make the session "
                          f"differ:\n  pure:     {a!r}\n  compiled: {b!r}")
    finally:
        session_module.DECODE_SLICE = DEFAULT_SLICE


if __name__ == "__main__":
    common.main(TestOneInput, sys.argv)
