"""Fuzz target: the directory's real accept path, over real loopback sockets:
the first-byte sniffing (TLS or plaintext, SPEC §5.1), the TLS handshake and
session, the plaintext session, and the session protocol behind both.

One directory (``eurechat.directory.app.serve``, memory presence, SQLite
accounts in a temporary data directory) runs in a thread of the fuzzing
process, so its code is instrumented like the rest.  Each input is one client
connection, plaintext or TLS 1.3 (trusting the directory's own CA, as a peer
pins it): its bytes are sent, the client ends its input (a half-close; in
TLS, which has none, a final PING whose PONG says all was answered, then
close_notify), and everything the server writes is read.  BIND probes are answered by a fake
(even ports accept, odd ports refuse), so no fuzzer-chosen port on this
machine is ever dialled.  Findings:

* the server logs an ERROR or an exception escapes one of its tasks or
  callbacks (a handler installed on the loop and on the ``eurechat`` and
  ``asyncio`` loggers);
* what it writes is not whole, well-formed reply frames;
* it neither closes nor finishes answering a connection within 5 s of the
  client's end of input; it closes a TLS connection during the handshake.

Input layout (``seed()`` writes it): byte 0 bit 0 logs in as ``alice`` first
(so the fuzzer starts from an authenticated session), bit 1 speaks TLS; the
rest is sent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading

import common
from common import Finding, check

# Cheap password hashes (as in the tests): one login per input.
os.environ.setdefault("EURECHAT_ARGON2_MEMORY_KIB", "8")
os.environ.setdefault("EURECHAT_SCRYPT_N", "16")
common.instrumented_imports([
    "eurechat.directory.server", "eurechat.directory.session", "eurechat.directory.app",
    "eurechat.fallback", "eurechat.rules", "eurechat.message"])

from eurechat.directory import app, cli, server  # noqa: E402
from eurechat.errors import ProtocolError  # noqa: E402

PURE, _ = common.decoders()

PASSWORD = "alice-password"
LOGIN = b"USER 0 alice\nPASS 0 " + PASSWORD.encode() + b"\n"
REPLY_TYPES = {"ACK", "ERR", "RESULT", "PONG"}
CLOSE_WITHIN = 5.0


def seed(stream: bytes, login: bool = False, tls: bool = False) -> bytes:
    return bytes([(1 if login else 0) | (2 if tls else 0)]) + stream


async def fake_probe(address: str, port: int, *args, **kwargs):
    """Stands in for ``server.probe_tcp`` (whatever else it is told: a
    timeout, TLS): even ports accept, odd ones refuse."""
    return None if port % 2 == 0 else "connection refused (fuzz)"


class Trouble(logging.Handler):
    """Every ERROR the server logs, and every exception the loop reports."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(f"{record.name}: {record.getMessage()}"
                         + (f" ({record.exc_info[1]!r})" if record.exc_info else ""))

    def loop_exception(self, loop, context) -> None:
        self.seen.append(f"loop: {context.get('message')} {context.get('exception')!r}")


TROUBLE = Trouble()
ADDRESS: tuple = ()


def new_loop() -> asyncio.AbstractEventLoop:
    """The loop the directory runs on when installed with its extras: uvloop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def start_directory() -> None:
    """Start the directory in a daemon thread; return once it listens."""
    global ADDRESS
    data_dir = tempfile.mkdtemp(prefix="eurechat-fuzz-")
    import atexit
    atexit.register(shutil.rmtree, data_dir, True)
    subprocess.run([sys.executable, "-m", "eurechat.directory", "useradd", "alice",
                    "--password-stdin", "--data-dir", data_dir],
                   input=(PASSWORD + "\n").encode(), check=True, capture_output=True)
    opts = cli.build_serve_parser().parse_args([
        "--port", "0", "--data-dir", data_dir, "--registry", "memory", "--throttle", "memory",
        "--throttle-limit", "1000000", "--check-interval", "3600", "--log-level", "error"])
    server.probe_tcp = fake_probe
    for name in ("eurechat", "asyncio"):
        logging.getLogger(name).addHandler(TROUBLE)
    ready = threading.Event()
    listening: list = []

    def announce(host: str, port: int) -> None:
        listening.append((host, port))
        ready.set()

    def run() -> None:
        loop = new_loop()
        loop.set_exception_handler(TROUBLE.loop_exception)
        loop.run_until_complete(app.serve(opts, ready=announce, run_checker=False, signals=()))

    threading.Thread(target=run, name="directory", daemon=True).start()
    if not ready.wait(30):
        raise RuntimeError(f"the directory did not start: {TROUBLE.seen}")
    ADDRESS = listening[0]
    global CLIENT_TLS
    CLIENT_TLS = client_context(data_dir)


CLIENT_TLS = None


def client_context(data_dir: str):
    """Trusts the directory's own CA (what a peer pins), TLS 1.3."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.load_verify_locations(os.path.join(data_dir, "tls", "ca.crt"))
    return context


SENTINEL = b"PING 0 fuzz-end\n"


def ends_between_frames(data: bytes) -> bool:
    """Whether ``data`` ends between two frames, so a PING after it is read as
    a PING (a malformed stream counts too: the directory closes on it)."""
    decoder = PURE(max_payload=1 << 40)
    try:
        decoder.feed(data)
    except ProtocolError:
        return True
    return not decoder.in_frame


def tls_exchange(data: bytes) -> bytes:
    """``exchange`` inside TLS, where there is no half-close (the client's
    close_notify ends the session): a PING follows the input and its PONG,
    the last reply, says everything was answered; then close_notify.  Input
    that ends inside a frame is followed by close_notify at once.  The records
    go through memory BIOs, so nothing waits on a timer."""
    sock = socket.create_connection(ADDRESS, timeout=CLOSE_WITHIN)
    # Several small writes (handshake, then the input): no Nagle delay.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = CLIENT_TLS.wrap_bio(incoming, outgoing)
    decoder = PURE(max_payload=1 << 40)
    received = []
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                chunk = sock.recv(65536)
                check(bool(chunk), "the directory closed during the TLS handshake")
                incoming.write(chunk)
        wait = ends_between_frames(data)
        payload = data + SENTINEL if wait else data
        if payload:
            tls.write(payload)
        if not wait:
            try:
                tls.unwrap()
            except ssl.SSLWantReadError:
                pass
        try:
            sock.sendall(outgoing.read())
        except (BrokenPipeError, ConnectionResetError):
            return b""
        done = False
        while not done:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except socket.timeout:
                raise Finding(f"TLS connection neither answered nor closed within "
                              f"{CLOSE_WITHIN} s of the client's end of input: {data[:200]!r}"
                              ) from None
            if not chunk:
                break
            incoming.write(chunk)
            while True:
                try:
                    plain = tls.read(65536)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    plain = b""
                if not plain:  # the directory's close_notify: the session is over
                    done = True
                    break
                received.append(plain)
                for item in decoder.feed(plain):
                    if item.type == "PONG" and item.args == ("fuzz-end",):
                        done = True
    finally:
        sock.close()
    return b"".join(received)


def exchange(data: bytes) -> bytes:
    """Send ``data`` on a new connection, half-close, read until the server closes."""
    sock = socket.create_connection(ADDRESS, timeout=CLOSE_WITHIN)
    received = []
    try:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us early (a malformed request): what it wrote is still there
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except socket.timeout:
                raise Finding(f"connection neither answered nor closed within {CLOSE_WITHIN} s "
                              f"of the client's end of input: {data[:200]!r}") from None
            if not chunk:
                break
            received.append(chunk)
    finally:
        sock.close()
    return b"".join(received)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris calls
    if not ADDRESS:
        start_directory()
    if not data:
        return
    stream = (LOGIN if data[0] & 1 else b"") + data[1:]
    replies = tls_exchange(stream) if data[0] & 2 else exchange(stream)
    for item in common.frames(replies):
        check(item.type in REPLY_TYPES, f"reply type {item.type}")
    if TROUBLE.seen:
        seen, TROUBLE.seen[:] = list(TROUBLE.seen), []
        raise Finding("the directory reported trouble:\n  " + "\n  ".join(seen))


if __name__ == "__main__":
    common.main(TestOneInput, sys.argv)
