"""Command line of ``eurechat-directory`` (SPEC §3).

``eurechat-directory [serve] [options]`` runs the server;
``useradd`` / ``userdel`` / ``users`` manage accounts in the data directory.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import math
import os
import sys
from typing import List, Optional

from ..names import USERNAME_RULE
from ..paths import default_data_dir
from ..usage import LOG_LEVELS, MissingExtra, Parser, can_prompt, missing_extra, require_extra
from .backends import (
    check_accounts,
    check_registry,
    check_throttle,
    is_distributed,
    is_postgres,
)

__all__ = ["main", "build_serve_parser", "MAX_WORKERS"]

log = logging.getLogger("eurechat.directory.cli")

#: The most ``--workers`` accepted.  Each worker is a whole interpreter
#: (~30 MB) and one event loop; more workers than CPUs only share them, so
#: a figure far above any machine's CPU count is a typo (100000 forked until
#: the OOM killer came).  Above the CPU count is allowed, with a WARNING.
MAX_WORKERS = 256

SUBCOMMANDS = ("serve", "useradd", "userdel", "users", "fingerprint")

DESCRIPTION = """\
The eurechat directory server: peers log in, publish the address they listen
on (BIND) and look each other up (QUERY).  It prints
'eurechat-directory listening on HOST:PORT' when it accepts connections and
exits 0 on SIGINT/SIGTERM.

Other commands:
  eurechat-directory useradd NAME [--password-stdin] [--data-dir DIR] [--accounts URL]
  eurechat-directory userdel NAME [--data-dir DIR] [--accounts URL]
  eurechat-directory users [--data-dir DIR] [--accounts URL]
  eurechat-directory fingerprint [--data-dir DIR]

Every session may be TLS 1.3 or plaintext on the same port (the first byte
tells); plaintext is allowed from loopback only by default (--plaintext).
"""

EPILOG = """\
Try it:  eurechat-directory --port 8888 &   then   nc 127.0.0.1 8888
and type:  REGISTER 0 dave s3cret-pass   USER 0 dave   PASS 0 s3cret-pass   QUERY 0
"""


def _positive_float(text: str) -> float:
    value = float(text)
    # nan and inf parse as floats: nan passed "<= 0" and then crashed the lease
    # ("cannot convert float NaN to integer") or made the checker's sleep meaningless.
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError("must be a finite number > 0")
    return value


def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum`` (a clear usage error, never
    a traceback or a server that silently misbehaves, e.g. a checker with 0
    probe slots that never finishes a round)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}")
        return value
    return parse


def _int_between(minimum: int, maximum: int):
    """An argparse type: an integer in ``minimum..maximum``."""
    def parse(text: str) -> int:
        value = _int_at_least(minimum)(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}")
        return value
    return parse


def _port(text: str) -> int:
    value = _int_at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError("must be 0-65535")
    return value


def _host_port(text: str) -> tuple:
    """``HOST:PORT`` (``[::1]:9100`` for IPv6; port 0 picks a free one)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError("expected HOST:PORT, e.g. 127.0.0.1:9100")
    return host.strip("[]"), _port(port)


def _accounts_url(text: str) -> str:
    try:
        return check_accounts(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected sqlite:///PATH or postgresql://...")


def _throttle_url(text: str) -> str:
    try:
        return check_throttle(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected memory or redis://HOST:PORT/DB")


def _data_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", default=None, metavar="DIR",
        help="where accounts and the throttle table live "
             f"(default: $XDG_DATA_HOME/eurechat, here {default_data_dir()})")


def build_serve_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="eurechat-directory", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        short_usage="eurechat-directory [serve] [--host HOST] [--port PORT] [--workers N] "
                    "[options]")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 or :: for every interface "
                        "(default: %(default)s)")
    p.add_argument("--port", type=_port, default=8888,
                   help="TCP port; 0 picks a free one and prints it (default: %(default)s)")
    p.add_argument("--workers", type=_int_between(1, MAX_WORKERS), default=1, metavar="N",
                   help="worker processes sharing the port, each one event loop; with N>1 a "
                        "supervisor restarts dead workers and runs the checker; at most "
                        f"{MAX_WORKERS}, a WARNING above the number of CPUs (default: 1)")
    _data_dir_arg(p)
    p.add_argument("--registry", default=None, metavar="memory|manager|redis://HOST:PORT/DB",
                   help="where presence lives: in process (default with one worker), a "
                        "multiprocessing Manager shared by the workers (default with N>1), or "
                        "Redis shared by several directory hosts")
    p.add_argument("--accounts", type=_accounts_url, default=None, metavar="URL",
                   help="account store: SQLite in the data directory (default), "
                        "sqlite:///PATH, or postgresql://USER@HOST/DB")
    p.add_argument("--throttle", type=_throttle_url, default=None, metavar="URL",
                   help="failed-login counters: SQLite in the data directory, shared by the "
                        "workers (default; the --registry Redis when that is redis://), "
                        "memory, or redis://...")
    p.add_argument("--registration", choices=("open", "closed"), default="open",
                   help="whether clients may create accounts with REGISTER (default: open)")
    p.add_argument("--bind-policy", choices=("own", "any"), default="own",
                   help="own: a BIND must name the client's own source address; any: any IP "
                        "(for peers behind NAT or proxies) (default: own)")
    p.add_argument("--check-interval", type=_positive_float, default=30.0, metavar="S",
                   help="seconds between liveness rounds that PING every registration "
                        "(default: %(default)s)")
    p.add_argument("--max-payload", type=_int_at_least(0), default=64 * 1024, metavar="BYTES",
                   help="largest request payload after login; larger ones get "
                        "'ERR message too large' and the session continues (default: 65536)")
    p.add_argument("--max-connections", type=_int_at_least(1), default=10000, metavar="N",
                   help="sessions per worker; beyond it a new connection gets "
                        "'ERR max number of clients reached' (default: %(default)s)")
    tls = p.add_argument_group("transport (TLS 1.3 and plaintext share the port)")
    tls.add_argument("--plaintext", choices=("off", "loopback", "on"), default="loopback",
                     help="who may use the plaintext framing: nobody (TLS only), clients on "
                          "127.0.0.0/8 and ::1, or everyone; a refused client gets "
                          "'ERR TLS required' (default: %(default)s)")
    tls.add_argument("--tls-ca-cert", default=None, metavar="FILE",
                     help="an operator's CA certificate (PEM) that issues this host's server "
                          "certificate and users' certificates, instead of the CA created in "
                          "DIR/tls; hosts sharing one CA serve one user base")
    tls.add_argument("--tls-ca-key", default=None, metavar="FILE",
                     help="the private key of --tls-ca-cert (PEM, unencrypted)")
    p.add_argument("--log-level", default="info", choices=LOG_LEVELS,
                   help="logging threshold for eurechat.directory.* on stderr (default: info)")
    p.add_argument("--trace", action="store_true",
                   help="log every frame in and out (passwords masked; frames of TLS "
                        "sessions decrypted and marked TLS)")
    p.add_argument("--metrics", type=_host_port, default=None, metavar="HOST:PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (port 0 picks a "
                        "free one; the address is printed); needs 'eurechat[metrics]'")
    p.add_argument("--no-uvloop", action="store_true",
                   help="use the standard asyncio loop even when uvloop is installed")
    t = p.add_argument_group("tuning (defaults follow the protocol specification)")
    t.add_argument("--auth-timeout", type=_positive_float, default=30.0, metavar="S",
                   help="close sessions not authenticated within S seconds (default: 30)")
    t.add_argument("--handshake-timeout", type=_positive_float, default=10.0, metavar="S",
                   help="a TLS handshake must finish within S seconds (inside the "
                        "--auth-timeout window) (default: 10)")
    t.add_argument("--frame-timeout", type=_positive_float, default=60.0, metavar="S",
                   help="a frame once started must complete within S seconds (default: 60)")
    t.add_argument("--preauth-max-payload", type=_int_at_least(0), default=4096, metavar="BYTES",
                   help="largest payload before login (default: 4096)")
    t.add_argument("--close-linger", type=_positive_float, default=10.0, metavar="S",
                   help="a closing session whose client does not read its last replies is "
                        "aborted after S seconds (default: 10)")
    t.add_argument("--bind-timeout", type=_positive_float, default=2.0, metavar="S",
                   help="a BIND address must accept a TCP connection within S (default: 2)")
    t.add_argument("--probe-timeout", type=_positive_float, default=5.0, metavar="S",
                   help="the checker waits S seconds for each PONG (default: 5)")
    t.add_argument("--probe-concurrency", type=_int_at_least(1), default=1000, metavar="N",
                   help="liveness probes in flight at once (default: 1000)")
    t.add_argument("--throttle-limit", type=_int_at_least(1), default=5, metavar="N",
                   help="failed logins per user or address before refusing (default: 5)")
    t.add_argument("--throttle-window", type=_positive_float, default=60.0, metavar="S",
                   help="window for counting failures and length of the refusal (default: 60)")
    t.add_argument("--query-limit", type=_int_at_least(1), default=10_000, metavar="N",
                   help="QUERY 0 lists at most N registrations, the first by name, and marks "
                        "the reply 'RESULT <len> truncated' (default: 10000)")
    t.add_argument("--lease", type=_positive_float, default=10.0, metavar="S",
                   help="with --registry redis://: lease period of the liveness checker's "
                        "leases across hosts; a dead holder's shards are taken over within S "
                        "seconds (default: 10)")
    t.add_argument("--checker-shards", type=_int_between(1, 1024), default=16, metavar="N",
                   help="with --registry redis://: registrations are split into N shards by "
                        "name, each with its own checker lease; every host probes at most its "
                        "fair share of them; 1: a single checker; at most 1024 (default: %(default)s)")
    t.add_argument("--high-water", type=_int_at_least(1), default=64 * 1024, metavar="BYTES",
                   help="unsent reply bytes per session above which it is no longer read "
                        "(default: 65536)")
    t.add_argument("--manager-restarts", type=_int_at_least(0), default=3, metavar="K",
                   help="with --workers N (Manager presence): a dead presence Manager is "
                        "replaced (workers restarted, peers re-BIND) up to K times within "
                        "--manager-restart-window; one more death exits 1; 0: exit 1 at the "
                        "first (default: %(default)s)")
    t.add_argument("--manager-restart-window", type=_positive_float, default=300.0,
                   metavar="S", help="the window for --manager-restarts (default: 300)")
    # Internal: how the supervisor hands a worker its socket and pipes.
    p.add_argument("--worker-fd", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--parent-fd", type=int, default=None, help=argparse.SUPPRESS)
    return p


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s")
    logging.getLogger("eurechat").setLevel(level.upper())


def _serve(argv: List[str]) -> int:
    parser = build_serve_parser()
    opts = parser.parse_args(argv)
    opts.data_dir = opts.data_dir or str(default_data_dir())
    if opts.workers < 1:
        parser.error("--workers must be >= 1")
    if opts.registry is None:
        opts.registry = "manager" if opts.workers > 1 else "memory"
    if opts.registry == "memory" and opts.workers > 1:
        parser.error("--registry memory keeps presence inside one process: "
                     "use --registry manager (the default) with --workers N>1")
    try:
        check_registry(opts.registry)
    except ValueError:
        parser.error(f"unknown --registry {opts.registry!r}")
    if opts.throttle is None and is_distributed(opts.registry):
        opts.throttle = opts.registry  # several hosts: failed-login counters shared in Redis
    if opts.max_payload < 0 or opts.max_connections < 1:
        parser.error("--max-payload must be >= 0 and --max-connections >= 1")
    if opts.metrics and opts.worker_fd is None:
        from . import metrics
        if not metrics.available():
            print(f"eurechat-directory: --metrics needs prometheus_client: {metrics.EXTRA}",
                  file=sys.stderr)
            return 2
    _require_extras(opts)
    if (opts.tls_ca_cert is None) != (opts.tls_ca_key is None):
        parser.error("--tls-ca-cert and --tls-ca-key go together")
    setup_logging(opts.log_level)
    cpus = _cpus()
    if opts.worker_fd is None and opts.workers > cpus:
        log.warning("--workers %d is more than the %d CPU(s) here: the workers share them "
                    "(more processes, more memory, no more throughput)", opts.workers, cpus)
    if opts.worker_fd is not None:
        from .supervisor import worker_main
        return worker_main(opts)
    if opts.workers > 1:
        from .supervisor import supervise
        return supervise(opts, argv)
    if opts.registry == "manager":
        from .supervisor import supervise
        return supervise(opts, argv)
    from .app import run
    return run(opts)


def _cpus() -> int:
    """The CPUs this process may run on (its affinity, else all of them)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _is_redis(url: Optional[str]) -> bool:
    return bool(url) and is_distributed(url)


def _is_postgres(url: Optional[str]) -> bool:
    return bool(url) and is_postgres(url)


def _require_extras(opts: argparse.Namespace) -> None:
    """Each optional dependency the options need, checked before anything
    starts (``MissingExtra``: one line naming the extra to install)."""
    if _is_redis(getattr(opts, "registry", None)):
        require_extra("redis", "--registry redis://...")
    if _is_redis(getattr(opts, "throttle", None)):
        require_extra("redis", "--throttle redis://...")
    if _is_postgres(getattr(opts, "accounts", None)):
        require_extra("psycopg", "--accounts postgresql://...")


def _read_password(from_stdin: bool) -> bytes:
    if from_stdin:
        line = sys.stdin.buffer.readline()
        return line.rstrip(b"\r\n")
    if not can_prompt():
        raise SystemExit(_usage_line("no password: use --password-stdin (the first line of "
                                     "stdin), or run on a terminal to be asked"))
    try:
        first = getpass.getpass("password: ")
        again = getpass.getpass("again: ")
    except (EOFError, KeyboardInterrupt):
        raise SystemExit(_usage_line("no password given")) from None
    if again != first:
        raise SystemExit(_usage_line("passwords do not match"))
    return first.encode("utf-8")


def _usage_line(text: str) -> int:
    print(f"eurechat-directory: {text}", file=sys.stderr)
    return 2


def _manage(argv: List[str]) -> int:
    p = Parser(prog="eurechat-directory",
               description="Manage directory accounts (SQLite in the data "
                           "directory; the server may be running).",
               short_usage="eurechat-directory useradd|userdel|users ...")
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("useradd", help="create an account")
    add.add_argument("name", help=USERNAME_RULE)
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of stdin (no prompt)")
    _data_dir_arg(add)
    rm = sub.add_parser("userdel", help="delete an account")
    rm.add_argument("name", help="the account to delete")
    _data_dir_arg(rm)
    ls = sub.add_parser("users", help="list account names")
    _data_dir_arg(ls)
    for sp in (add, rm, ls):
        sp.add_argument("--accounts", type=_accounts_url, default=None, metavar="URL",
                        help="the server's account store: sqlite:///PATH or postgresql://...")
    args = p.parse_args(argv)
    _require_extras(args)
    from .backends import make_sync_accounts
    from .errors import AccountExists, AccountsUnavailable
    try:
        store = make_sync_accounts(args.accounts, args.data_dir)
    except AccountsUnavailable as exc:
        print(f"eurechat-directory: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "useradd":
            password = _read_password(args.password_stdin)
            try:
                store.create(args.name, password)
            except AccountExists:
                print(f"eurechat-directory: account {args.name} already exists", file=sys.stderr)
                return 1
            except ValueError as exc:
                print(f"eurechat-directory: {exc}", file=sys.stderr)
                return 2
            print(f"account {args.name} created")
            return 0
        if args.command == "userdel":
            if store.delete(args.name):
                print(f"account {args.name} deleted")
                return 0
            print(f"eurechat-directory: no account {args.name}", file=sys.stderr)
            return 1
        for name in store.names():
            print(name)
        return 0
    finally:
        store.close()


def _fingerprint(argv: List[str]) -> int:
    p = Parser(
        prog="eurechat-directory fingerprint",
        description="Print the directory's fingerprint (its CA key's, SPEC §5.2): what "
                    "peers pin and what users compare.  When DIR has no identity yet, "
                    "one is created (the same the server would create at its first start).")
    _data_dir_arg(p)
    p.add_argument("--tls-ca-cert", default=None, metavar="FILE",
                   help="print the fingerprint of this operator's CA certificate instead")
    args = p.parse_args(argv)
    from ..tls.fingerprint import fingerprint
    from ..tls.identity import IdentityError, load_directory_identity, stored_fingerprint
    try:
        if args.tls_ca_cert:
            from cryptography import x509
            try:
                with open(args.tls_ca_cert, "rb") as f:
                    cert = x509.load_pem_x509_certificate(f.read())
            except (OSError, ValueError) as exc:
                print(f"eurechat-directory: cannot read {args.tls_ca_cert}: "
                      f"{getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
                return 2
            print(fingerprint(cert.public_key()))
            return 0
        data_dir = args.data_dir or default_data_dir()
        found = stored_fingerprint(data_dir)
        if found is None:
            setup_logging("warning")
            found = load_directory_identity(data_dir).fingerprint
    except IdentityError as exc:
        print(f"eurechat-directory: {exc}", file=sys.stderr)
        return 2
    print(found)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "fingerprint":
            return _fingerprint(argv[1:])
        if argv and argv[0] in SUBCOMMANDS[1:]:
            return _manage(argv)
        if argv and argv[0] == "serve":
            argv = argv[1:]
        try:
            return _serve(argv)
        except KeyboardInterrupt:
            return 0
    except MissingExtra as exc:
        return _usage_line(str(exc))
    except ImportError as exc:
        extra = missing_extra(exc)
        if extra is None:
            raise
        return _usage_line(str(extra))


if __name__ == "__main__":
    sys.exit(main())
