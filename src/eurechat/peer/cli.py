"""``eurechat-peer`` / ``python -m eurechat.peer``: the chat client of SPEC section 4.

Exit codes (also in docs/peer.md):

====  ==========================================================
0     ``/quit``, end of piped input, SIGINT/SIGTERM
1     unexpected internal error
2     usage error (bad flag, bad name, no way to get a password)
3     authentication failed (wrong password, unknown user, throttled)
4     ``--register`` refused: the name is taken (or registration closed)
5     a peer for this user already runs: on this data directory, or
      online elsewhere (listed at an address that answers)
6     cannot listen on the ``--listen`` address
7     the directory is not the one this peer trusts (SPEC §5.2)
8     ``--register`` refused: the password breaks the rule (8 to 1024 bytes)
9     the directory has another key enrolled for this user (``--reset-key``)
====  ==========================================================

A directory that is down at start-up is deliberately *not* an error: the peer
starts, takes commands, queues messages and keeps retrying (SPEC section 4).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

from ..names import INVALID_PASSWORD, USERNAME_RULE, valid_password
from ..tls.fingerprint import is_fingerprint
from ..tls.policy import Plaintext
from ..tls.trust import TrustError, read_ca_file
from ..usage import LOG_LEVELS, Parser, can_prompt
from .credentials import Credentials
from .directory_client import (
    AlreadyOnline,
    AuthFailed,
    DirectoryError,
    DirectoryUnavailable,
    KeyMismatch,
    NameTaken,
    PasswordNeeded,
    PasswordRefused,
)
from .identity import IdentityError
from .peer import Peer, PeerError
from .protocol import valid_name
from .settings import env_float as _env_float
from .store import INBOX_RETENTION, StoreLocked, default_data_dir
from .ui import Output, piped_lines, terminal_lines

log = logging.getLogger("eurechat.peer.cli")

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_AUTH, EXIT_TAKEN, EXIT_LOCKED, EXIT_LISTEN = range(7)
#: the directory is not the one this peer trusts (SPEC §5.2)
EXIT_TRUST = 7
#: ``--register`` with a password the rule refuses (7 is the trust store's)
EXIT_PASSWORD = 8
#: the directory has another key enrolled for this user (SPEC §5.3)
EXIT_KEY = 9


def host_port(text: str) -> Tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]")
    return host, int(port)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(text: str) -> float:
    """``90d``, ``12h``, ``30m``, ``45s`` or a bare number of days -> seconds;
    ``0`` or ``forever`` -> 0 (keep for ever)."""
    t = text.strip().lower()
    if t in ("forever", "never"):
        return 0.0
    unit = _UNITS.get(t[-1:]) if t else None
    number = t[:-1] if unit is not None else t
    try:
        value = float(number) * (unit or 86400.0)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 90d, 12h, 30m, 45s (or 0 / forever), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="eurechat-peer", short_usage="eurechat-peer --user NAME [--register] "
                                          "[--directory HOST:PORT] [options]",
        description="eurechat peer: chat with other peers directly; messages are kept "
                    "until delivered.",
        epilog="Password: $EURECHAT_PASSWORD, else --password-file, else a prompt; not "
               "needed while DATA-DIR/USER.crt, the certificate the directory issues at "
               "each login, is valid. "
               "Commands: /msg NAME[,NAME...] TEXT, /who [NAME], /ping NAME, /pending, /waiting, "
               "/verify NAME, /trust NAME, /quit; "
               "a line without / goes to the peer(s) you last wrote to (before you "
               "wrote to anyone: whoever last wrote to you).")
    p.add_argument("--user", required=True, help="your user name")
    p.add_argument("--directory", type=host_port, default=("127.0.0.1", 8888),
                   metavar="HOST:PORT", help="directory server (default 127.0.0.1:8888)")
    p.add_argument("--register", action="store_true",
                   help="create the account first (fine if it is already yours)")
    p.add_argument("--listen", type=host_port, default=("127.0.0.1", 0), metavar="HOST:PORT",
                   help="where other peers reach you (default 127.0.0.1:0, a free port)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="outbox/inbox directory (default $XDG_DATA_HOME/eurechat, else "
                        "~/.local/share/eurechat)")
    p.add_argument("--json", action="store_true", help="one JSON event per line on stdout")
    p.add_argument("--inbox-retention", type=duration, default=INBOX_RETENTION,
                   metavar="DURATION",
                   help="keep the record of a received (and shown) message this long, to "
                        "recognise a resent copy: 90d (default), 12h, 30m, 45s, or "
                        "0/forever to keep everything")
    p.add_argument("--password-file", type=Path, default=None,
                   help="read the password from the first line of this file")
    p.add_argument("--reset-key", action="store_true",
                   help="the directory has another key enrolled for you (identity.key was "
                        "lost or replaced): log in with the password and enrol this peer's "
                        "key instead (other peers see a key change)")
    p.add_argument("--rotate-key", action="store_true",
                   help="replace the identity key by a new one, authorised by the valid "
                        "certificate of the old one (other peers see a key change)")
    p.add_argument("--directory-ca", type=Path, default=None, metavar="FILE",
                   help="trust the directory whose certificate is issued by this CA "
                        "certificate (PEM)")
    p.add_argument("--directory-fingerprint", default=None, metavar="sha256:...",
                   help="trust the directory whose CA has this fingerprint (what "
                        "'eurechat-directory fingerprint' prints); without this or "
                        "--directory-ca the first CA seen is trusted and kept in "
                        "DATA-DIR/known_directories")
    p.add_argument("--plaintext", choices=[p.value for p in Plaintext], default="loopback",
                   help="where plaintext (no TLS) is allowed: for a directory that does not "
                        "speak TLS, and on the listening port (default loopback)")
    p.add_argument("--strict-keys", action="store_true",
                   help="hold messages to a peer whose key changed until /trust NAME")
    p.add_argument("--log-level", type=log_level, metavar="{" + ",".join(LOG_LEVELS) + "}",
                   default=os.environ.get("EURECHAT_LOG_LEVEL", "warning"),
                   help="logging threshold on stderr (default: $EURECHAT_LOG_LEVEL, else "
                        "warning)")
    return p


def log_level(text: str) -> str:
    """One of LOG_LEVELS, in any case (the default, ``$EURECHAT_LOG_LEVEL``,
    goes through here too)."""
    if text.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from {', '.join(LOG_LEVELS)})")
    return text.lower()


def given_password(args: argparse.Namespace) -> Optional[str]:
    """The password from $EURECHAT_PASSWORD or --password-file, else None."""
    pw = os.environ.get("EURECHAT_PASSWORD")
    if pw:
        return pw
    if args.password_file is not None:
        try:
            data = args.password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise SystemExit(_usage(f"cannot read --password-file: {exc}"))
        pw = data.splitlines()[0] if data else ""
        if not pw:
            raise SystemExit(_usage(f"--password-file {args.password_file} is empty"))
        return pw
    return None


def read_password(args: argparse.Namespace) -> str:
    pw = given_password(args)
    if pw:
        return pw
    if not can_prompt():
        raise SystemExit(_usage("no password: set EURECHAT_PASSWORD, use --password-file, "
                                "or run on a terminal to be asked"))
    try:
        pw = getpass.getpass(f"password for {args.user}: ")
    except (EOFError, KeyboardInterrupt):
        raise SystemExit(_usage("no password given"))
    if not pw:
        raise SystemExit(_usage("empty password"))
    return pw


def prompt_later(args: argparse.Namespace) -> Callable[[], Optional[str]]:
    """The password source of a peer that has a valid certificate: asked
    only if the directory refuses it, and then a prompt if there is a
    terminal (None otherwise: the peer says why it needs the password)."""
    def ask() -> Optional[str]:
        if not can_prompt():
            return None
        try:
            return getpass.getpass(f"password for {args.user}: ") or None
        except (EOFError, KeyboardInterrupt):
            return None
    return ask


def usable_certificate(args: argparse.Namespace) -> Optional[Credentials]:
    """The user's valid certificate in the data directory, if any."""
    try:
        creds = Credentials.load(args.data_dir or default_data_dir(), args.user)
    except IdentityError:
        return None     # said when the peer starts
    return creds if creds is not None and creds.valid() else None


def _usage(text: str) -> int:
    print(f"eurechat-peer: {text}", file=sys.stderr)
    return EXIT_USAGE


class App:
    """Reads commands, drives the Peer, renders its events."""

    def __init__(self, args: argparse.Namespace,
                 password: Union[str, Callable[[], Optional[str]]]) -> None:
        self.args = args
        self.tty = sys.stdin.isatty() and sys.stdout.isatty()
        self.out = Output(args.json, tty=self.tty)
        self.peer = Peer(args.user, password, directory=args.directory, listen=args.listen,
                         data_dir=args.data_dir, register=args.register,
                         on_messages=self._show, on_event=self.out.event,
                         inbox_retention=args.inbox_retention,
                         directory_ca=args.directory_ca_pem,
                         directory_fingerprint=args.directory_fingerprint,
                         plaintext=args.plaintext, on_notice=self.notice,
                         reset_key=args.reset_key, rotate_key=args.rotate_key,
                         strict_keys=args.strict_keys)
        self.out.mark = self.peer.mark_shown
        self.out.on_gone = self._stdout_gone
        self.last: List[str] = []
        self.last_sender: Optional[str] = None
        self.quit = asyncio.Event()
        self.leave = True
        self.tasks: set = set()

    def _show(self, msgs) -> None:
        self.out.show_messages(msgs)
        self.last_sender = msgs[-1].sender

    def error(self, text: str) -> None:
        self.out.event({"event": "error", "text": text})

    def notice(self, text: str) -> None:
        """A line to see once (a directory trusted on first use, plaintext):
        on stderr, so that --json's stdout stays the SPEC's events."""
        print(f"eurechat-peer: {text}", file=sys.stderr, flush=True)

    def fatal(self, text: str, code: int) -> int:
        if self.args.json:
            self.error(text)
        print(f"eurechat-peer: {text}", file=sys.stderr)
        return code

    async def run(self) -> int:
        try:
            await self.peer.start()
        except AuthFailed as exc:
            return self.fatal(f"login as {self.args.user!r} failed: {exc} (wrong password? "
                              "new here? add --register)", EXIT_AUTH)
        except NameTaken as exc:
            return self.fatal(f"{exc} (the name is taken: pick another --user)", EXIT_TAKEN)
        except AlreadyOnline as exc:
            return self.fatal(f"{exc}: quit that one first", EXIT_LOCKED)
        except PasswordRefused as exc:
            return self.fatal(f"{exc} (choose a longer password)", EXIT_PASSWORD)
        except TrustError as exc:
            return self.fatal(str(exc), EXIT_TRUST)
        except KeyMismatch as exc:
            return self.fatal(str(exc), EXIT_KEY)
        except PasswordNeeded as exc:
            return self.fatal(f"{exc}: set EURECHAT_PASSWORD, use --password-file, or run on "
                              "a terminal to be asked", EXIT_USAGE)
        except StoreLocked as exc:
            return self.fatal(str(exc), EXIT_LOCKED)
        except OSError as exc:
            if self.peer.store is None:   # the store never opened: not a listen problem
                return self.fatal(f"cannot use the data directory {self.peer.data_dir} (--data-dir): "
                                  f"{exc.strerror or exc}", EXIT_USAGE)
            h, p = self.args.listen
            return self.fatal(f"cannot listen on {h}:{p}: {exc.strerror or exc}", EXIT_LISTEN)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._signalled)
        reader = asyncio.ensure_future(self.read_commands())
        quitter = asyncio.ensure_future(self.quit.wait())
        await asyncio.wait({reader, quitter}, return_when=asyncio.FIRST_COMPLETED)
        for t in (reader, quitter, *self.tasks):
            t.cancel()
        with contextlib.suppress(BaseException):
            await reader
        await self.peer.close(leave=self.leave)
        return EXIT_OK

    def _stdout_gone(self) -> None:
        log.warning("stdout is closed (broken pipe): quitting")
        self.quit.set()

    def _signalled(self) -> None:
        self.leave = False
        self.quit.set()

    async def read_commands(self) -> None:
        if self.tty:
            await self.read_terminal()
            return
        async for line in piped_lines():
            if await self.command(line):
                return
        if not self.tty:
            # End of piped input: give what was just sent a moment to arrive.
            linger = _env_float("EURECHAT_EOF_LINGER", 10.0, zero_ok=True)
            if linger > 0:
                await self.peer.wait_idle(linger)

    async def read_terminal(self) -> None:
        """Lines typed at the terminal.  The prompt stays up while a command
        runs (a ``/who`` may wait seconds for the directory): what is typed
        meanwhile goes into the prompt's line, instead of being echoed raw by
        the terminal, and the commands still run one at a time, in order."""
        typed: asyncio.Queue = asyncio.Queue()

        async def run_commands() -> None:
            while True:
                line = await typed.get()
                if line is None or await self.command(line):
                    self.quit.set()
                    return

        runner = asyncio.ensure_future(run_commands())
        self.tasks.add(runner)
        try:
            async for line in terminal_lines(f"{self.args.user}> "):
                if runner.done():
                    break
                typed.put_nowait(line)
            typed.put_nowait(None)   # Ctrl-D: quit once what was typed has run
            await runner
        finally:
            runner.cancel()

    async def command(self, line: str) -> bool:
        """Run one input line; True means quit."""
        line = line.strip()
        if not line:
            return False
        if not line.startswith("/"):
            # The peer(s) last written to; before we wrote to anyone, whoever
            # wrote to us last (so you can just answer).  Once chosen it
            # stays: a message that arrives while you type must not send
            # your line somewhere else.
            to = self.last or ([self.last_sender] if self.last_sender else [])
            if not to:
                self.error("nobody to send to yet: start with /msg NAME TEXT")
                return False
            if self.send(to, line):
                self.last = to
            return False
        cmd, _, rest = line.partition(" ")
        rest = rest.strip()
        if cmd == "/msg":
            names, _, text = rest.partition(" ")
            recipients = [n for n in names.split(",") if n]
            bad = [n for n in recipients if not valid_name(n)]
            if not recipients or not text.strip() or bad:
                self.error("usage: /msg NAME[,NAME...] TEXT" +
                           (f" (invalid name {bad[0]!r})" if bad else ""))
                return False
            if self.send(recipients, text):
                self.last = recipients
        elif cmd == "/who":
            try:
                users = await self.peer.who(rest or None)
            except DirectoryUnavailable as exc:
                self.error(f"/who: {exc}")
            except DirectoryError as exc:
                self.error(f"/who: the directory refused: {exc}")
            except asyncio.TimeoutError:
                self.error("/who: no answer from the directory")
            else:
                event = {"event": "who", "users": [u.as_dict() for u in users]}
                if rest and not self.args.json:
                    event["name"] = rest   # for humans: "carol is not online"
                self.out.event(event)
        elif cmd == "/ping":
            if not valid_name(rest):
                self.error("usage: /ping NAME")
                return False
            task = asyncio.ensure_future(self._ping(rest))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif cmd == "/pending":
            event = {"event": "pending", "messages": self.peer.pending()}
            if not self.args.json:
                # For humans, per recipient: how long, and seen when.  The
                # JSON event keeps the SPEC's shape (/waiting has this).
                event["recipients"] = self.peer.waiting()
                event["directory_online"] = self.directory_online()
            self.out.event(event)
        elif cmd == "/waiting":
            event = {"event": "waiting", "recipients": self.peer.waiting()}
            if not self.args.json:   # what "never seen" can mean depends on it
                event["directory_online"] = self.directory_online()
            self.out.event(event)
        elif cmd in ("/verify", "/trust"):
            if not valid_name(rest):
                self.error(f"usage: {cmd} NAME")
                return False
            if cmd == "/trust":
                fp = self.peer.trust_key(rest)
                if fp is None:
                    self.error(f"/trust: no key seen for {rest} yet")
                elif not self.args.json:
                    self.out.event({"event": "trusted", "name": rest, "fingerprint": fp})
            else:
                task = asyncio.ensure_future(self._verify(rest))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        elif cmd == "/quit":
            return True
        elif cmd == "/help":
            if not self.args.json:
                self.out.event({"event": "help"})
        else:
            self.error(f"unknown command {cmd} (try /help)")
        return False

    def directory_online(self) -> bool:
        """Logged in to the directory now (or running without one)."""
        directory = self.peer.directory
        return directory is None or directory.online

    def send(self, recipients: List[str], text: str) -> bool:
        try:
            _, fut = self.peer.send_nowait(recipients, text)
        except PeerError as exc:
            self.error(str(exc))
            return False
        fut.add_done_callback(self._sent)
        return True

    def _sent(self, fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            self.error(str(fut.exception()))

    async def _verify(self, name: str) -> None:
        try:
            await self.peer.verify(name)   # the event is emitted by the peer
        except (PeerError, DirectoryError, asyncio.TimeoutError) as exc:
            self.error(f"/verify {name}: {exc or 'timeout'}")

    async def _ping(self, name: str) -> None:
        try:
            ms = await self.peer.ping(name)
        except (PeerError, DirectoryError, asyncio.TimeoutError) as exc:
            self.error(f"/ping {name}: {exc or 'timeout'}")
        else:
            self.out.event({"event": "pong", "from": name, "ms": round(ms, 3)})


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not valid_name(args.user):
        return _usage(f"invalid --user {args.user!r}: {USERNAME_RULE}")
    if args.directory_fingerprint is not None and not is_fingerprint(args.directory_fingerprint):
        return _usage(f"invalid --directory-fingerprint {args.directory_fingerprint!r}: "
                      "expected sha256: and 43 characters, as 'eurechat-directory "
                      "fingerprint' prints")
    args.directory_ca_pem = None
    if args.directory_ca is not None:
        try:
            args.directory_ca_pem = read_ca_file(args.directory_ca)
        except TrustError as exc:
            return _usage(f"--directory-ca: {exc}")
    if args.reset_key and args.rotate_key:
        return _usage("--reset-key and --rotate-key exclude each other (a reset is for a "
                      "lost key, a rotation needs the old key's certificate)")
    certified = None if args.register or args.reset_key else usable_certificate(args)
    if args.rotate_key and certified is None:
        return _usage("--rotate-key needs a valid certificate of the current key (log in "
                      "once with the password first; for a lost key use --reset-key)")
    password: Union[str, Callable[[], Optional[str]]]
    try:
        # With a valid certificate the peer logs in by it: a password given
        # is kept for when the directory refuses it, none is asked for now.
        password = (given_password(args) or prompt_later(args)) if certified is not None \
            else read_password(args)
    except SystemExit as exc:
        return int(exc.code or EXIT_USAGE)
    if args.register and isinstance(password, str) and \
            not valid_password(password.encode("utf-8")):
        print(f"eurechat-peer: cannot register {args.user!r}: {INVALID_PASSWORD} "
              "(choose a longer password)", file=sys.stderr)
        return EXIT_PASSWORD

    async def amain() -> int:
        return await App(args, password).run()

    try:
        return asyncio.run(amain())
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception:
        log.exception("internal error")
        return EXIT_INTERNAL
