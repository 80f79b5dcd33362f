"""Running one directory process: backends up, server listening, clean exit.

``serve`` is the whole directory with ``--workers 1`` (server and checker in
one event loop) and the body of each worker process otherwise (the
supervisor passes the listening socket and runs the checker itself).  The
steps they share with the supervisor -- the stop signals, opening backends
with a one-line error, the checker with its election, closing everything
without hanging -- are the functions below, used by both.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import ssl
from typing import Callable, Optional, Sequence, Tuple

from ..tls.contexts import server_context, use_probe_identity
from ..tls.identity import DirectoryIdentity, IdentityError, load_directory_identity
from ..tls.policy import Plaintext
from . import metrics
from .backends import make_accounts, make_election, make_registry, make_throttle
from .checker import LivenessChecker
from .errors import BackendUnavailable
from .interfaces import Registry
from .server import DirectoryServer, ServerConfig, Services
from .session import SessionConfig

log = logging.getLogger("eurechat.directory.app")

__all__ = ["server_config", "serve", "run", "install_uvloop", "stop_event", "open_backends",
           "close_backends", "start_checker", "stop_checker", "announce", "load_identity",
           "chosen_loop", "warn_stock_loop"]


def chosen_loop(enabled: bool = True) -> str:
    """The loop ``install_uvloop(enabled)`` installs: "uvloop" or "asyncio"."""
    if enabled and not os.environ.get("EURECHAT_NO_UVLOOP"):
        try:
            import uvloop  # noqa: F401
        except ImportError:
            return "asyncio"
        return "uvloop"
    return "asyncio"


def install_uvloop(enabled: bool = True) -> str:
    """Use uvloop when it is installed (and not disabled); returns the loop name."""
    name = chosen_loop(enabled)
    if name == "uvloop":
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return name


def raise_nofile(want: int) -> int:
    """Raise this process's soft descriptor limit towards ``want`` (each session
    is a descriptor); warn when the hard limit does not allow it."""
    try:
        import resource
    except ImportError:  # not POSIX
        return want
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(hard, want)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
        if soft < want:
            log.warning("open-file limit is %d: fewer sessions than --max-connections "
                        "can be served (raise ulimit -n)", soft)
    return soft


def load_identity(opts: argparse.Namespace) -> Tuple[DirectoryIdentity, ssl.SSLContext]:
    """The directory's identity (created on first start) and its TLS context;
    ``IdentityError`` with a one-line reason when it cannot be used."""
    identity = load_directory_identity(
        opts.data_dir, opts.host, ca_cert_file=getattr(opts, "tls_ca_cert", None),
        ca_key_file=getattr(opts, "tls_ca_key", None))
    try:
        context = server_context(identity)
        use_probe_identity(identity)
        return identity, context
    except (ssl.SSLError, OSError) as exc:
        raise IdentityError(f"cannot use the server certificate in {identity.directory}: "
                            f"{exc}") from None


def server_config(opts: argparse.Namespace,
                  identity: Optional[Tuple[DirectoryIdentity, ssl.SSLContext]] = None
                  ) -> ServerConfig:
    return ServerConfig(
        session=SessionConfig(
            max_payload=opts.max_payload,
            preauth_max_payload=min(opts.preauth_max_payload, opts.max_payload),
            registration_open=opts.registration == "open",
            bind_policy=opts.bind_policy,
            query_limit=opts.query_limit,
            ca_pem=identity[0].ca_pem if identity else b""),
        plaintext=Plaintext.parse(getattr(opts, "plaintext", "loopback")),
        ssl_context=identity[1] if identity else None,
        max_connections=opts.max_connections,
        auth_timeout=opts.auth_timeout,
        handshake_timeout=getattr(opts, "handshake_timeout", 10.0),
        frame_timeout=opts.frame_timeout,
        bind_timeout=opts.bind_timeout,
        high_water=opts.high_water,
        trace=opts.trace,
        close_linger=opts.close_linger)


def stop_event(signals: Sequence[int]) -> asyncio.Event:
    """An event set by any of ``signals`` (the loop's handlers: no traceback,
    no lost signal)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    return stop


async def open_backends(backends: Sequence) -> bool:
    """Start ``backends`` in order.  One that cannot start is one ERROR line
    ("cannot start: ..."); then everything opened so far is closed again and
    the answer is False (the caller exits 2)."""
    started = []
    for backend in backends:
        try:
            await backend.start()
        except (BackendUnavailable, OSError) as exc:
            log.error("cannot start: %s", exc)
            await close_backends([*started, backend])
            return False
        started.append(backend)
    return True


async def close_backends(backends: Sequence, timeout: float = 1.0) -> None:
    """Close ``backends`` in reverse order, each within ``timeout`` seconds:
    shutting down reports a failure and never hangs on one."""
    for backend in reversed(backends):
        try:
            await asyncio.wait_for(backend.close(), timeout)
        except Exception as exc:
            log.warning("closing %s: %s", type(backend).__name__, exc)


async def start_checker(opts: argparse.Namespace, registry: Registry) -> LivenessChecker:
    """The liveness checker of ``opts`` on ``registry``, with its election
    (``make_election``), running."""
    election = make_election(opts.registry, lease=opts.lease, shards=opts.checker_shards)
    await election.start()
    checker = LivenessChecker(registry, election, opts.check_interval, opts.probe_timeout,
                              opts.probe_concurrency)
    checker.start()
    return checker


async def stop_checker(checker: Optional[LivenessChecker]) -> None:
    """Stop the rounds, then give up the election (a lease is handed over)."""
    if checker is not None:
        await checker.close()
        await checker.election.close()


async def serve(opts: argparse.Namespace, sock: Optional[socket.socket] = None,
                ready: Optional[Callable[[str, int], None]] = None,
                run_checker: bool = True, manager_address=None,
                authkey: Optional[bytes] = None,
                signals: tuple = (signal.SIGINT, signal.SIGTERM)) -> int:
    """Serve until one of ``signals``; returns the exit code."""
    raise_nofile(opts.max_connections + opts.probe_concurrency + 256)
    stop = stop_event(signals)
    registry = make_registry(opts.registry, manager_address=manager_address, authkey=authkey)
    accounts = make_accounts(opts.accounts, opts.data_dir)
    throttle = make_throttle(opts.throttle, opts.data_dir, limit=opts.throttle_limit,
                             window=opts.throttle_window)
    metrics.count_registrations(registry.query)
    backends = [registry, accounts, throttle]
    if not await open_backends(backends):
        return 2
    try:
        identity = load_identity(opts)
    except IdentityError as exc:
        log.error("cannot start: %s", exc)
        await close_backends(backends)
        return 2
    if run_checker:  # the only process (a supervisor logs it for its workers)
        log.info("directory fingerprint %s", identity[0].fingerprint)
    server = DirectoryServer(server_config(opts, identity),
                             Services(registry, accounts, throttle, opts.bind_timeout,
                                      identity=identity[0] if identity else None))
    try:
        host, port = await server.start(opts.host, opts.port, sock)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", opts.host, opts.port, exc.strerror or exc)
        await close_backends(backends)
        return 2
    checker = await start_checker(opts, registry) if run_checker else None
    if ready is not None:
        ready(host, port)
    renewer = asyncio.ensure_future(keep_identity(opts, server))
    await stop.wait()
    log.info("shutting down")
    renewer.cancel()
    await server.close(timeout=1.5)
    await stop_checker(checker)
    await close_backends(backends)
    return 0


#: How often a running directory looks at its server certificate (renewed
#: within 30 days of expiry, or when it no longer chains to the CA).
IDENTITY_CHECK_INTERVAL = 6 * 3600.0


async def keep_identity(opts: argparse.Namespace, server: DirectoryServer,
                        interval: float = IDENTITY_CHECK_INTERVAL) -> None:
    """Renew the server certificate while the directory runs: a directory up
    for a year must not serve an expired certificate.  New connections get
    the renewed one; the CA, and so the fingerprint peers pinned, stays."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        try:
            identity = await loop.run_in_executor(None, load_identity, opts)
        except IdentityError as exc:
            log.warning("cannot check the server certificate: %s (still serving the "
                        "current one)", exc)
            continue
        server.set_tls(*identity)


def announce(host: str, port: int) -> None:
    print(f"eurechat-directory listening on {host}:{port}", flush=True)
    if metrics.url:  # second: the ready line stays the first line
        print(f"eurechat-directory metrics on {metrics.url}", flush=True)


def start_metrics(opts: argparse.Namespace, multiprocess: bool) -> bool:
    """``--metrics``: count in this process and serve them from it (``announce``
    prints the address).  False (logged) if it cannot listen."""
    metrics.enable(multiprocess)
    host, port = opts.metrics
    try:
        metrics.serve_http(host, port)
    except OSError as exc:
        log.error("cannot serve metrics on %s:%s: %s", host, port, exc.strerror or exc)
        return False
    return True


def warn_stock_loop(loop_name: str) -> None:
    """TLS sessions on asyncio's own loop cost ~10x the memory (its SSLProtocol
    commits a 256 KiB buffer per connection, CPython issue 109534): say so."""
    if loop_name != "uvloop":
        log.warning("running on the standard asyncio loop: each TLS session holds about "
                    "280 KB (uvloop: about 26 KB); install uvloop for many TLS sessions")


def run(opts: argparse.Namespace) -> int:
    """``--workers 1``: everything in this process."""
    warn_stock_loop(install_uvloop(not opts.no_uvloop))
    if opts.metrics and not start_metrics(opts, multiprocess=False):
        return 2
    return asyncio.run(serve(opts, ready=announce))
