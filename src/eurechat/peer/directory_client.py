"""The peer's side of the directory protocol (SPEC sections 2 and 5).

One long-lived session over TLS: the directory's identity is checked first
(``eurechat.tls.trust``: a pinned CA, a given fingerprint, or trust on first
use), and only then ``HELLO``, (``REGISTER``,) ``USER``, ``PASS``, ``BIND`` of
the real listening address, then QUERY/LEAVE on demand.  A directory that
does not answer TLS (the seed course's) is spoken to in plaintext only where
the ``--plaintext`` policy allows it and nothing is pinned for it, and then in
the seed dialect: ``USER 0``, ``PASS 0 <password>``, one request at a time.  Requests are pipelined and their
replies matched in order (the directory answers each request exactly once,
in order).  When the session drops, the client reconnects on its own with
exponential backoff and jitter and BINDs again, so a directory restart costs
the user nothing but a short pause in lookups.

Fatal only at start-up: a wrong password (``AuthFailed``), a name taken by
someone else (``NameTaken``) and a directory that is not the one this peer
trusts (``TrustError``; later it is an ``on_error`` and credential-free
retries).  A directory that is down at start-up is not
fatal (SPEC section 4): ``start()`` returns False and the client keeps trying.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import socket
import ssl
from collections import deque
from typing import Awaitable, Callable, List, Optional, Tuple, Union

from cryptography.hazmat.primitives.asymmetric import ed25519

from ..backoff import jittered_delay as backoff_delay
from ..errors import ProtocolError
from ..framing import Decoder, Message, Oversized
from ..registration import Registration
from ..tls.fingerprint import fingerprint
from ..tls.policy import Plaintext, allows
from ..tls.trust import (
    DirectoryTrust,
    Expectation,
    TrustError,
    TrustMismatch,
    client_context,
    describe_identity,
)
from .credentials import (
    Credentials,
    CredentialsError,
    certificate_request,
    check_chain,
    save_chain,
    write_key,
)
from .identity import IdentityError, load_identity_key
from .transport import HANDSHAKE_ERRORS, tcp_connect

__all__ = ["DirectoryClient", "DirectoryError", "DirectoryUnavailable", "AuthFailed",
           "NameTaken", "PasswordRefused", "AlreadyOnline", "PasswordNeeded", "KeyMismatch",
           "Registration", "parse_result",
           "backoff_delay", "fits_argument"]

log = logging.getLogger("eurechat.peer.directory")

#: Inbound payload limit from the directory (SPEC section 4).
DIRECTORY_MAX_PAYLOAD = 64 * 1024 * 1024
WILDCARDS = {"", "0.0.0.0", "::"}
#: What a directory past its ``--max-connections`` answers a new connection
#: (SPEC section 2) before closing it: the directory is full, not our login bad.
FULL = "max number of clients reached"
#: The protocol version this client announces over TLS (SPEC section 5.3).
HELLO = ("HELLO", ("eurechat/2",))
#: The header line limit of the directory's decoder (SPEC section 1).
MAX_HEADER = 4096


class DirectoryError(Exception):
    """Base of the directory client's errors."""


class DirectoryUnavailable(DirectoryError):
    """No session with the directory right now; it is being retried."""


class AuthFailed(DirectoryError):
    """The directory refused our user name and password."""


class NameTaken(DirectoryError):
    """``--register`` of a name that belongs to somebody else (or registration is closed)."""


class AlreadyOnline(DirectoryError):
    """Another peer of the same user (another data directory, or another
    host) is listed and answers at its address: the directory keeps one
    address per user (the last BIND wins), so starting a second one would
    take the first one's messages, and the second's LEAVE would unlist both."""


class PasswordRefused(DirectoryError):
    """``--register`` with a password the directory's rule refuses (its length):
    no account can have it, so there is no point in trying to log in with it."""


class PasswordNeeded(DirectoryError):
    """A login needs the password and there is none: no certificate of the
    enrolled key to log in with (none yet, expired, reset or rotated
    elsewhere), or ``reset_key``.  The text says why."""


class KeyMismatch(DirectoryError):
    """The directory has another key enrolled for this user: this peer's
    ``identity.key`` was lost or replaced (or the key was reset or rotated
    from elsewhere).  Its listener cannot prove the user (the directory
    refuses to publish it, SPEC §5.4) until ``reset_key``."""


#: The ``CERT`` refusal that means this peer's key is not the enrolled one.
KEY_MISMATCH = "key mismatch:"
#: A certificate with less than this left is renewed on the live session
#: (it is renewed at every login too): a peer that stays logged in for
#: days never needs its password again.
RENEW_BEFORE = datetime.timedelta(days=3)
#: What a password provider is: called (in a thread: it may prompt) only
#: when a login needs the password; returns None when there is none.
PasswordSource = Callable[[], Optional[str]]


def parse_result(payload: bytes) -> List[Registration]:
    """``name,address,port`` lines; after ``HELLO`` a fourth field, the user's
    key fingerprint (SPEC section 5.3; empty: no key, a seed peer), which a
    dialler requires the listener's certificate to carry (section 5.4)."""
    out = []
    for line in payload.decode("utf-8", "replace").split("\n"):
        if not line:
            continue
        parts = line.split(",")
        # A port a socket can dial, in ASCII digits ("²".isdigit() too, and
        # getaddrinfo wraps 70000 to 4464); a name and an address.
        if len(parts) not in (3, 4) or not (parts[0] and parts[1] and parts[2].isascii()
                                            and parts[2].isdigit() and len(parts[2]) <= 5
                                            and 0 < int(parts[2]) < 65536):
            log.warning("ignoring malformed RESULT line %r", line)
            continue
        fp = parts[3] if len(parts) == 4 else ""
        out.append(Registration(parts[0], parts[1], int(parts[2]), tls=bool(fp),
                                fingerprint=fp))
    return out


def fits_argument(password: str) -> bool:
    """Whether ``PASS 0 <password>`` is a valid header: no space or control
    byte, not empty, within the header limit.  Such a password goes as an
    argument, which every directory (the seed course's too) understands;
    any other one as a payload (``PASS <len>``)."""
    raw = password.encode("utf-8")
    return bool(raw) and len(raw) + len("PASS 0 \n") <= MAX_HEADER and \
        all(0x21 <= b <= 0x7E or b >= 0x80 for b in raw)


class _NotTLS(Exception):
    """The directory did not complete a TLS handshake (it speaks plaintext,
    closed, or stayed silent)."""


def _check_full(reply: Message) -> None:
    """A full directory is an unavailable one (retried with backoff), not a
    refused login or a taken name, which would be fatal at start-up."""
    if reply.type == "ERR" and reply.text.startswith(FULL):
        raise DirectoryUnavailable(f"the directory is full ({reply.text})")


class DirectoryClient:
    """Keeps one authenticated, bound session with the directory alive."""

    def __init__(self, host: str, port: int, user: str,
                 password: Union[str, PasswordSource, None], *,
                 listen: Callable[[], Tuple[str, int]], register: bool = False,
                 retry_base: float = 0.2, retry_max: float = 30.0,
                 request_timeout: float = 10.0, wait_online: float = 3.0,
                 on_online: Optional[Callable[[], None]] = None,
                 on_error: Optional[Callable[[str], None]] = None,
                 recheck: float = 30.0, stable_after: float = 10.0,
                 exclusive: bool = False,
                 trust: Optional[DirectoryTrust] = None,
                 plaintext: Plaintext = Plaintext.LOOPBACK,
                 on_notice: Optional[Callable[[str], None]] = None,
                 data_dir: Union[str, os.PathLike, None] = None,
                 reset_key: bool = False, rotate_key: bool = False,
                 on_credentials: Optional[Callable[[Credentials], None]] = None) -> None:
        """``trust``: whom to believe (None: every directory is refused, as a
        directory client with no trust settings can send credentials to no
        one).  ``plaintext``: where a directory that does not answer TLS may
        be spoken to in clear.  ``on_notice``: the lines a person should see
        once (a directory trusted on first use, a plaintext fallback, the
        directory back after an outage).

        ``password``: the password, or a ``PasswordSource`` asked only when a
        login needs one (the CLI's prompt), or None.  ``data_dir``: where the
        identity key and the user's certificate are (SPEC §5.3; None: no
        certificates, password logins only).  Over TLS, a session is opened
        with the certificate while it is valid and logs in by it; after any
        login the key is certified again (``CERT``) and the chain kept.
        ``reset_key``: the first login is by password and sends ``CERT
        reset`` (a lost key).  ``rotate_key``: the first session opened with
        a valid certificate certifies a new key, which then replaces
        ``identity.key``.  ``on_credentials``: called with each new chain."""
        self.host, self.port = host, port
        self.where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.trust = trust if trust is not None else DirectoryTrust()
        self.plaintext = plaintext
        self.on_notice = on_notice
        #: the last session was plaintext in the seed dialect
        self.seed = False
        self._said_seed = False
        self._unsent: deque = deque()
        self.user = user
        self.password = password if isinstance(password, str) else ""
        self._password_source = password if callable(password) else None
        self.data_dir = data_dir
        self.reset_key, self.rotate_key = reset_key, rotate_key
        self.on_credentials = on_credentials
        #: the last session logged in by certificate
        self.by_certificate = False
        #: the certificate now kept (after the last CERT or the last load)
        self.credentials: Optional[Credentials] = None
        #: a certificate whose sessions the directory dropped before the
        #: login: not presented again in this run (serial numbers)
        self._refused_certs: set = set()
        self._said_mismatch = ""
        self._expected: Optional[Expectation] = None
        self.register = register
        self.listen = listen
        self.retry_base, self.retry_max = retry_base, retry_max
        self.request_timeout = request_timeout
        self.wait_online = wait_online
        self.recheck = recheck
        #: a session that lasted this long resets the reconnect backoff
        self.stable_after = stable_after
        self._online = asyncio.Event()
        self.on_online = on_online
        self.on_error = on_error
        self.bound: Optional[Tuple[str, int]] = None
        self._writer: Optional[asyncio.StreamWriter] = None
        self._waiters: deque = deque()
        self._ready = False
        self._closing = False
        self._task: Optional[asyncio.Task] = None
        self._reader_task: Optional[asyncio.Task] = None
        #: a session was set up (and BOUND) once: later sessions re-BIND
        #: without checking for another instance (we were first)
        self._bound_once = False
        #: before the first BIND, refuse to start when another peer of this
        #: user answers at the address the directory lists (AlreadyOnline)
        self.exclusive = exclusive
        #: how long the check for another instance waits for its address
        self.probe_timeout = 2.0

    @property
    def online(self) -> bool:
        return self._ready

    # -- life cycle ---------------------------------------------------------
    async def start(self) -> bool:
        """First session.  True: logged in and bound.  False: the directory is
        unreachable (retrying in the background).  Raises AuthFailed/NameTaken."""
        try:
            await self._session()
            ok = True
        except (AuthFailed, NameTaken, PasswordRefused, AlreadyOnline, TrustError,
                PasswordNeeded, KeyMismatch):
            raise
        except (OSError, asyncio.TimeoutError, DirectoryError, ProtocolError) as exc:
            # Said once: as a log line, or to whoever shows on_error's text
            # (the CLI's screen, where a log line as well would say it twice).
            (log.info if self.on_error else log.warning)(
                "directory %s unreachable: %s; retrying in the background",
                self.where, exc or exc.__class__.__name__)
            if self.on_error:
                why = exc if isinstance(exc, DirectoryError) else \
                    f"unreachable ({exc or exc.__class__.__name__})"
                self.on_error(f"directory {self.where}: {why}; retrying in the "
                              "background (messages are queued meanwhile)")
            ok = False
        self._task = asyncio.ensure_future(self._run(connected=ok))
        return ok

    async def close(self, leave: bool = False) -> None:
        if leave and self._ready:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.request(Message("LEAVE")), 2.0)
        self._closing = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._drop("closed")

    async def _run(self, connected: bool) -> None:
        attempt = 0
        ever = connected  # a session existed: coming back is a reconnection
        refused = False   # a refused login was reported (once, until a login works)
        elsewhere = False  # another instance online was reported (once)
        said = ""         # the last trust failure reported (once per run of them)
        loop = asyncio.get_running_loop()
        while not self._closing:
            if connected:
                began = loop.time()
                await self._watch_session()
                if self._closing:
                    return
                log.warning("lost the directory session; reconnecting")
                # A session that lived ``stable_after`` proved the directory
                # works (a restart): log in again at once.  One that ended
                # right after the login proves nothing (a directory, or a
                # proxy in front of it, that drops every session): back off,
                # or we would log in, and make it hash a password, in a
                # tight loop.  The first such loss still reconnects at once.
                if loop.time() - began >= self.stable_after:
                    attempt = 0
                if attempt:
                    await asyncio.sleep(backoff_delay(attempt - 1, self.retry_base,
                                                      self.retry_max))
                attempt += 1
            else:
                delay = backoff_delay(attempt, self.retry_base, self.retry_max)
                attempt += 1
                await asyncio.sleep(delay)
            try:
                await self._session()
                connected = True
                refused = elsewhere = False
                said = ""
                log.info("directory session re-established")
                if self.on_notice:
                    self.on_notice("reconnected to the directory" if ever
                                   else "connected to the directory")
                ever = True
            except (PasswordNeeded, KeyMismatch) as exc:
                # The certificate is refused (a reset or rotation elsewhere)
                # or expired, and no password is at hand; or the key is not
                # the enrolled one: said once, retried slowly.
                connected = False
                attempt = max(attempt, 30)
                text = (f"{exc}; still retrying" if isinstance(exc, KeyMismatch) else
                        f"{exc}; restart with the password; still retrying")
                if not refused:
                    if self.on_error:
                        self.on_error(text)
                    else:
                        log.warning("%s", text)
                refused = True
            except AuthFailed as exc:
                # The account is gone (deleted, or a directory with other
                # accounts) or the password changed: say so once, and keep
                # retrying slowly (it may be restored).
                connected = False
                attempt = max(attempt, 30)
                text = (f"the directory refused the login as {self.user!r}: {exc} (no such "
                        "account? start with --register; a new password? restart with it); "
                        "still retrying")
                if refused:
                    log.debug("%s", text)
                elif self.on_error:
                    self.on_error(text)
                else:
                    log.warning("%s", text)
                refused = True
            except AlreadyOnline as exc:
                # Found when the directory came back after a start without
                # it: stay off the directory (messages stay queued) until
                # the other instance is gone.
                connected = False
                if not elsewhere and self.on_error:
                    self.on_error(f"{exc}; not logging in while it runs (retrying)")
                elsewhere = True
            except TrustError as exc:
                # Not the directory we trust: no credential was sent, none
                # will be.  Said once per run of failures; retried with backoff
                # (the real directory may come back at that address).
                connected = False
                if str(exc) != said:
                    log.warning("%s", exc)
                    if self.on_error:
                        self.on_error(str(exc))
                else:
                    log.debug("%s", exc)
                said = str(exc)
            except (OSError, asyncio.TimeoutError, DirectoryError, ProtocolError) as exc:
                connected = False
                log.debug("directory reconnect failed: %r", exc)

    async def _watch_session(self) -> None:
        """Wait for the session to end; meanwhile, every ``recheck`` seconds,
        make sure we are still registered.

        The directory may drop our registration while the session lives on:
        its liveness probe failed (we were stopped, busy, or briefly
        unreachable from it).  Nobody tells us; without this check we would
        stay invisible, and everybody's messages for us queued, until a
        restart.  One small QUERY per interval finds it, and we BIND again."""
        task = self._reader_task
        if task is None:
            return
        while not task.done():
            await asyncio.wait([task], timeout=self.recheck)
            if task.done() or self._closing or not self._ready:
                return
            try:
                await self._check_registration()
                await self._renew_if_old()
            except (OSError, asyncio.TimeoutError, DirectoryError, ProtocolError) as exc:
                log.debug("registration check failed: %r", exc)

    async def _check_registration(self) -> None:
        if self.bound is None:
            return
        reply = await self.request(Message("QUERY", (self.user,)))
        if reply.type != "RESULT":
            return
        host, port = self.bound
        if any(r.name == self.user for r in parse_result(reply.payload)):
            # Listed (here, or where another instance of us BOUND later: the
            # last BIND wins, and two instances must not take turns stealing it).
            return
        log.warning("the directory no longer lists us at %s:%s (a failed liveness probe?): "
                    "binding again", host, port)
        reply = await self.request(Message("BIND", (host, str(port))))
        if reply.type != "ACK":
            raise DirectoryError(f"BIND {host}:{port} refused: {reply.text}")
        if self.on_online:
            self.on_online()

    # -- one session --------------------------------------------------------
    async def _session(self) -> None:
        self._drop("reconnecting")
        reader, writer, expected, presented = await self._open()
        self._writer = writer
        sock = writer.get_extra_info("socket")
        if sock is not None:   # notice a directory host that vanished without a FIN
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._reader_task = asyncio.ensure_future(self._read(reader))
        self.by_certificate = False
        logged_in = False
        try:
            if not self.seed:
                # Nothing that carries a credential is written before this.
                expected = await self._check_identity(writer, expected)
                reply = await self.request(Message(*HELLO))
                _check_full(reply)
                if reply.type != "ACK":
                    raise DirectoryError(f"HELLO refused: {reply.text}")
            if self.register and self.seed:
                self._notice(f"directory {self.where} speaks the seed dialect, which has no "
                             "registration: logging in to an existing account")
                self.register = False
            if self.register:
                reply = await self.request(Message("REGISTER", (self.user,), self.password))
                _check_full(reply)
                if reply.type == "ERR" and reply.text.startswith("invalid password"):
                    raise PasswordRefused(f"cannot register {self.user!r}: {reply.text}")
                if reply.type != "ACK":
                    # Maybe it is our own account from an earlier run: try to log in.
                    why = reply.text
                    try:
                        await self._login(presented)
                    except AuthFailed:
                        raise NameTaken(f"cannot register {self.user!r}: {why}") from None
                    log.info("account %r already exists and the password matches", self.user)
                    self.register = False
                else:
                    self.register = False  # created once; later sessions just log in
                    await self._login(presented)
            else:
                await self._login(presented)
            logged_in = True
            host, port = self.listen()
            if host in WILDCARDS:
                host = writer.get_extra_info("sockname")[0]
            if self.exclusive and not self._bound_once:
                await self._check_not_running_elsewhere(host, port)
            if not self.seed:
                # Before BIND: the directory checks that the listener shows
                # the enrolled key's certificate (SPEC §5.4).
                assert expected is not None
                self._expected = expected
                await self._certify(expected)
            reply = await self.request(Message("BIND", (host, str(port))))
            if reply.type != "ACK":
                raise DirectoryError(f"BIND {host}:{port} refused: {reply.text}")
            self.bound = (host, port)
            self._bound_once = True
        except BaseException as exc:
            if presented is not None and not logged_in and isinstance(
                    exc, (OSError, DirectoryUnavailable, ProtocolError, asyncio.TimeoutError)):
                # TLS 1.3: a client certificate the directory refuses ends
                # the session after the handshake.  Not presented again.
                log.warning("the directory dropped a session opened with the certificate in "
                            "%s: logging in without it from now on", presented.cert_file)
                self._refused_certs.add(presented.cert.serial_number)
            self._drop("session setup failed")
            raise
        self._ready = True
        self._online.set()
        log.info("logged in to %s as %s%s, bound %s:%s", self.where, self.user,
                 " (plaintext, seed dialect)" if self.seed else "", *self.bound)
        if self.on_online:
            self.on_online()

    async def _check_not_running_elsewhere(self, host: str, port: int) -> None:
        """Before our first BIND: is this user listed at another address
        that accepts a connection?  Then another peer of ours runs there
        (``AlreadyOnline``).  A listing whose address does not answer is
        what a crashed or killed earlier run leaves behind until the
        directory's next liveness check: that is no reason to refuse."""
        reply = await self.request(Message("QUERY", (self.user,)))
        if reply.type != "RESULT":
            return
        for reg in parse_result(reply.payload):
            if reg.name != self.user or (reg.address, reg.port) == (host, port):
                continue
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(reg.address, reg.port), self.probe_timeout)
            except (OSError, asyncio.TimeoutError):
                log.info("%s was listed at %s:%s, which does not answer: an earlier run",
                         self.user, reg.address, reg.port)
                continue
            writer.close()
            raise AlreadyOnline(f"{self.user} is already online at {reg.address}:{reg.port} "
                                "(another eurechat-peer of this user, from another data "
                                "directory or host)")

    async def _tls(self, ca_pem: Optional[bytes], presented: Optional[Credentials] = None
                   ) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """TCP, then a TLS handshake (verified against ``ca_pem`` if given).

        Raises ``_NotTLS`` when the handshake does not complete for any reason
        but a certificate that failed verification."""
        context = client_context(ca_pem)
        if presented is not None:
            presented.apply(context)
        sock = await asyncio.wait_for(tcp_connect(self.host, self.port), self.request_timeout)
        peer_ip = sock.getpeername()[0]
        try:
            return await asyncio.wait_for(asyncio.open_connection(
                sock=sock, ssl=context, server_hostname=self.host,
                ssl_handshake_timeout=self.request_timeout), self.request_timeout + 1)
        except ssl.SSLCertVerificationError:
            sock.close()
            raise
        except HANDSHAKE_ERRORS as exc:
            sock.close()
            raise _NotTLS(peer_ip, exc) from None

    def _presentable(self, expected: Expectation) -> Optional[Credentials]:
        """The certificate to open the session with, if any: valid now (an
        expired one fails the handshake), of the current identity key, issued
        by the CA this directory is trusted by, not refused earlier in this
        run, and not when a reset is asked (that login is by password)."""
        if self.data_dir is None or self.reset_key or expected.fingerprint is None:
            return None
        try:
            creds = Credentials.load(self.data_dir, self.user)
        except IdentityError as exc:
            log.warning("%s", exc)
            return None
        self.credentials = creds
        if creds is None or not creds.valid() or creds.ca_fingerprint != expected.fingerprint \
                or creds.cert.serial_number in self._refused_certs:
            return None
        return creds

    async def _open(self) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                   Optional[Expectation], Optional[Credentials]]:
        """A transport to the directory: TLS (opened with this peer's
        certificate when it has a usable one), or the permitted plaintext
        fallback."""
        expected = self.trust.expect(self.where)
        presented = self._presentable(expected)
        if presented is not None and expected.ca_pem is None:
            # Pinned by fingerprint only: the CA kept with the certificate
            # has that fingerprint, so the handshake can be verified by it.
            expected = expected._replace(ca_pem=presented.ca_pem)
        try:
            try:
                reader, writer = await self._tls(expected.ca_pem, presented)
            except ssl.SSLError as exc:
                if presented is None or isinstance(exc, ssl.SSLCertVerificationError):
                    raise
                # the key file changed under the certificate: go without it
                log.info("cannot use %s: %s", presented.cert_file, exc)
                presented = None
                reader, writer = await self._tls(expected.ca_pem)
        except ssl.SSLCertVerificationError as exc:
            got, detail = await self._probe_identity()
            log.debug("TLS verification of %s failed: %s", self.where, exc)
            raise TrustMismatch(self.where, expected.fingerprint, got, detail) from None
        except _NotTLS as exc:
            peer_ip, why = exc.args
            pinned = expected.fingerprint is not None
            if pinned or not allows(self.plaintext, peer_ip):
                reason = ("it is pinned to a TLS identity" if pinned else
                          f"--plaintext {self.plaintext.value} does not allow plaintext to "
                          f"{peer_ip}")
                raise DirectoryUnavailable(
                    f"no TLS handshake with {self.where} "
                    f"({why or why.__class__.__name__}), and no plaintext: {reason}") from None
            sock = await asyncio.wait_for(tcp_connect(self.host, self.port),
                                          self.request_timeout)
            reader, writer = await asyncio.open_connection(sock=sock)
            if not self._said_seed:
                self._said_seed = True
                self._notice(f"directory {self.where} does not answer TLS: using plaintext "
                             f"and the seed dialect (allowed by --plaintext "
                             f"{self.plaintext.value})")
            self.seed = True
            return reader, writer, None, None
        self.seed = False
        return reader, writer, expected, presented

    async def _check_identity(self, writer: asyncio.StreamWriter,
                              expected: Optional[Expectation]) -> Expectation:
        """The directory is the one we trust, or ``TrustError`` (the session is
        then dropped by the caller, before any credential is written).
        Returns what the session is now known to be: the CA's fingerprint
        and PEM (found by ``CACERT`` on first use)."""
        assert expected is not None
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            raise TrustError(f"directory {self.where} presented no certificate; "
                             "no credentials were sent")
        if expected.ca_pem is not None:
            self.trust.check_verified(self.where, expected, der)
            return expected
        reply = await self.request(Message("CACERT"))
        if reply.type != "RESULT":
            raise TrustError(f"directory {self.where} did not send its CA certificate "
                             f"({reply.type} {reply.text}); no credentials were sent")
        fp, pinned = self.trust.accept_ca(self.where, expected, der, reply.payload)
        found = expected._replace(fingerprint=fp, ca_pem=reply.payload)
        if pinned:
            where = self.trust.known.path if self.trust.known is not None else "?"
            self._notice(f"directory {self.where} is trusted on first use: its CA "
                         f"fingerprint is {fp} (kept in {where}; compare it with "
                         "'eurechat-directory fingerprint' on the directory's host)")
        return found

    async def _probe_identity(self) -> Tuple[str, str]:
        """After a failed verification: what does the server there show?
        (fingerprint, detail) for the mismatch line, from a session that
        sends nothing but ``CACERT``."""
        writer = None
        try:
            reader, writer = await self._tls(None)
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True)
            ca_pem: Optional[bytes] = None
            writer.write(bytes(Message("CACERT")))
            decoder = Decoder(max_payload=DIRECTORY_MAX_PAYLOAD)
            with contextlib.suppress(OSError, asyncio.TimeoutError, ProtocolError,
                                     asyncio.IncompleteReadError):
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self.request_timeout
                while True:
                    data = await asyncio.wait_for(reader.read(65536),
                                                  max(deadline - loop.time(), 0.01))
                    items = decoder.feed(data) if data else [None]
                    if items:
                        first = items[0]
                        if isinstance(first, Message) and first.type == "RESULT":
                            ca_pem = first.payload
                        break
            return describe_identity(der, ca_pem)
        except (_NotTLS, OSError, asyncio.TimeoutError, ValueError) as exc:
            return "an unknown CA", f"its certificate could not be read: {exc}"
        finally:
            if writer is not None:
                writer.close()

    def _notice(self, text: str) -> None:
        if self.on_notice is not None:
            log.info("%s", text)
            self.on_notice(text)
        else:
            log.warning("%s", text)

    async def _login(self, presented: Optional[Credentials] = None) -> None:
        """``USER``, then ``PASS`` unless the session's certificate logged us in."""
        reply = await self.request(Message("USER", (self.user,)))
        _check_full(reply)
        if reply.type != "ACK":
            raise AuthFailed(reply.text)
        if presented is not None and reply.text.endswith("authenticated by certificate"):
            self.by_certificate = True
            log.info("logged in as %s by the certificate in %s", self.user, presented.cert_file)
            return
        if not self.password:
            await self._ask_password(presented)
        if fits_argument(self.password):
            msg = Message("PASS", (self.password,))
        elif self.seed:
            raise AuthFailed("this password cannot be sent to a seed directory, which takes "
                             "it as one argument: no spaces or control characters")
        else:
            msg = Message("PASS", (), self.password)
        reply = await self.request(msg)
        if reply.type != "ACK":
            raise AuthFailed(reply.text)

    def _why_password(self, presented: Optional[Credentials]) -> str:
        """Why this login needs the password (for the line that asks for it)."""
        if self.reset_key:
            return "a key reset is authorised by the password"
        if presented is not None:
            return (f"the directory does not accept the certificate in {presented.cert_file} "
                    "(its key is no longer the enrolled one)")
        creds = self.credentials
        if creds is None:
            return "no certificate yet" if self.data_dir is not None else "no certificate"
        if not creds.valid():
            return (f"the certificate in {creds.cert_file} expired "
                    f"{creds.valid_until:%Y-%m-%d %H:%M} UTC")
        return f"the certificate in {creds.cert_file} is from another directory CA"

    async def _ask_password(self, presented: Optional[Credentials]) -> None:
        """Get the password from the source (once), or ``PasswordNeeded``."""
        source, self._password_source = self._password_source, None
        why = self._why_password(presented)
        if source is not None:
            log.info("a password is needed to log in as %s: %s", self.user, why)
            got = await asyncio.get_running_loop().run_in_executor(None, source)
            if got:
                self.password = got
                return
        raise PasswordNeeded(f"logging in as {self.user!r} needs the password ({why})")

    async def _certify(self, expected: Expectation) -> None:
        """``CERT``: certify the identity key (enrol, renew; a reset or a
        rotation when asked) and keep the chain.  A refusal is said (a key
        mismatch once, with what to do) and the session goes on: a peer
        without a certificate still chats, it only needs its password."""
        if self.data_dir is None:
            return
        try:
            key = load_identity_key(self.data_dir)
        except IdentityError as exc:
            self._error(f"cannot certify this peer's key: {exc}")
            return
        rotate = self.rotate_key and self.by_certificate
        if self.rotate_key and not rotate:
            self._error("--rotate-key needs a valid certificate of the enrolled key to "
                        "authorise the new key (log in once with the password first, or "
                        "use --reset-key if the old key is lost); the key was not rotated")
            self.rotate_key = False
        reset = self.reset_key and not self.by_certificate
        new = ed25519.Ed25519PrivateKey.generate() if rotate else key
        reply = await self.request(Message("CERT", ("reset",) if reset else (),
                                           certificate_request(new)))
        if reply.type != "RESULT":
            text = reply.text
            if text.startswith(KEY_MISMATCH):
                raise KeyMismatch(
                    f"the directory refuses this peer's key {fingerprint(key.public_key())} "
                    f"({text}): was {os.path.join(str(self.data_dir), 'identity.key')} lost "
                    "or replaced? Restart with --reset-key (and the password) to enrol this "
                    "key; other peers will see a key change")
            text = f"the directory did not certify this peer's key: {text}"
            if text != self._said_mismatch:
                self._error(text)
            self._said_mismatch = text
            return
        try:
            cert, ca = check_chain(reply.payload, self.user, new.public_key())
        except CredentialsError as exc:
            self._error(f"the directory's certificate for {self.user} is not usable: {exc}")
            return
        if fingerprint(ca.public_key()) != expected.fingerprint:
            self._error(f"the directory's certificate for {self.user} is issued by another "
                        f"CA ({fingerprint(ca.public_key())}, expected {expected.fingerprint})")
            return
        before = self.credentials
        try:
            if rotate:
                # The key first: a crash before the chain is saved leaves the
                # new (enrolled) key and a chain that no longer matches it,
                # and the next start logs in by password and renews.
                write_key(self.data_dir, new)
            path = save_chain(self.data_dir, self.user, reply.payload)
        except OSError as exc:
            self._error(f"cannot keep the certificate for {self.user}: {exc.strerror or exc}")
            return
        creds = Credentials(self.user, new, cert, ca, path.parent / "identity.key", path)
        self.credentials = creds
        self._said_mismatch = ""
        fp = creds.fingerprint
        if rotate:
            self._notice(f"rotated the identity key of {self.user}: now {fp} (other peers "
                         "will see a key change)")
        elif reset:
            self._notice(f"reset the enrolled key of {self.user} to this peer's key {fp} "
                         "(other peers will see a key change)")
        elif before is None or before.fingerprint != fp:
            self._notice(f"the directory certified this peer's key {fp} for {self.user} "
                         f"(kept in {path}): the next starts need no password while it is "
                         "valid")
        log.info("certificate for %s renewed until %s", self.user, creds.valid_until)
        self.rotate_key = self.reset_key = False
        if self.on_credentials is not None:
            self.on_credentials(creds)

    async def _renew_if_old(self) -> None:
        """Renew the certificate on the live session when it is near its end."""
        creds = self.credentials
        if self.seed or self._expected is None or self.data_dir is None or creds is None:
            return
        now = datetime.datetime.now(datetime.timezone.utc)
        if creds.valid_until - now < RENEW_BEFORE:
            await self._certify(self._expected)

    def _error(self, text: str) -> None:
        if self.on_error is None:
            log.warning("%s", text)
        else:
            self.on_error(text)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        decoder = Decoder(max_payload=DIRECTORY_MAX_PAYLOAD)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for item in decoder.feed(data):
                    if isinstance(item, Oversized):
                        log.warning("directory sent an oversized %s (%d bytes)", item.type,
                                    item.length)
                        self._resolve(None)
                        continue
                    if item.type == "PING":
                        self._writer.write(bytes(Message("PONG", item.args)))
                        continue
                    self._resolve(item)
        except ProtocolError as exc:
            log.warning("directory broke the protocol: %s", exc)
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.debug("directory connection error: %r", exc)
        finally:
            self._drop("directory closed the connection")

    def _resolve(self, item: Optional[Message]) -> None:
        """Hand one reply to the oldest request.  Exactly one waiter per reply,
        even one that gave up waiting: skipping it would hand this reply to
        the next request and shift every later answer by one."""
        if not self._waiters:
            log.warning("unsolicited reply from the directory: %r", item)
            return
        fut = self._waiters.popleft()
        if not fut.done():
            if item is None:
                fut.set_exception(DirectoryError("oversized reply"))
            else:
                fut.set_result(item)
        if self._unsent:
            self._write_next()

    def _drop(self, why: str) -> None:
        self._ready = False
        self._online.clear()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        while self._waiters or self._unsent:
            fut = self._waiters.popleft() if self._waiters else self._unsent.popleft()[1]
            if not fut.done():
                fut.set_exception(DirectoryUnavailable(why))

    # -- requests -----------------------------------------------------------
    def request(self, msg: Message) -> Awaitable[Message]:
        """Send ``msg``; the awaitable resolves to the directory's reply.

        Requests are pipelined, except to a seed directory, which reads one
        request per read: there the next is written when the last is answered."""
        if self._writer is None:
            raise DirectoryUnavailable("not connected to the directory")
        fut = asyncio.get_running_loop().create_future()
        if self.seed and (self._waiters or self._unsent):
            self._unsent.append((bytes(msg), fut))
        else:
            self._waiters.append(fut)
            self._writer.write(bytes(msg))
        return self._reply(fut, self._writer)

    def _write_next(self) -> None:
        """Seed dialect: the oldest request not yet written goes out now."""
        while self._unsent and not self._waiters and self._writer is not None:
            data, fut = self._unsent.popleft()
            if fut.done():      # its caller gave up before it was written
                continue
            self._waiters.append(fut)
            self._writer.write(data)

    async def _reply(self, fut: asyncio.Future, writer: asyncio.StreamWriter) -> Message:
        try:
            return await asyncio.wait_for(fut, self.request_timeout)
        except asyncio.TimeoutError:
            # A directory that does not answer within request_timeout (hung,
            # or a half-open TCP connection after its host went away) is
            # treated as gone: drop the session so that _run reconnects.
            if self._writer is writer:
                log.warning("no reply from the directory within %.0f s: reconnecting",
                            self.request_timeout)
                self._drop("request timed out")
            raise

    async def query(self, name: Optional[str] = None) -> List[Registration]:
        """QUERY; while a reconnect is under way, wait up to ``wait_online`` for it."""
        if not self._ready:
            if self._closing or self._task is None or self.wait_online <= 0:
                raise DirectoryUnavailable("not connected to the directory")
            try:
                await asyncio.wait_for(self._online.wait(), self.wait_online)
            except asyncio.TimeoutError:
                raise DirectoryUnavailable("not connected to the directory (retrying)") from None
        reply = await self.request(Message("QUERY", (name,) if name else ()))
        if reply.type != "RESULT":
            raise DirectoryError(f"QUERY refused: {reply.text}")
        return parse_result(reply.payload)
