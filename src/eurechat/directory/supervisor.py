"""``--workers N``: one listening socket, N worker processes, one supervisor.

The supervisor binds the socket itself (so ``--port 0`` has one answer) and
hands it to each worker as an inherited file descriptor: the kernel's single
accept queue survives a worker's death, so connections that arrive while a
worker is being restarted are simply taken by the others.  Workers are fresh
interpreters (``python -m eurechat.directory --worker-fd ...``), not forks of
a process that already runs threads and an event loop.

The supervisor also owns what must exist once per directory: the Manager that
holds presence (``--registry manager``) and the liveness checker.  It restarts
a worker that dies (with a growing delay if it keeps dying at start-up) and
tells the presence hub to stop waiting for it.  SIGINT/SIGTERM: workers get
SIGTERM, are SIGKILLed if they have not exited after 3 s, the Manager is shut
down, exit 0.  Workers ignore SIGINT (a Ctrl-C reaches the whole process
group; the supervisor orders the shutdown) and exit on their own if the
supervisor disappears (EOF on an inherited pipe); the Manager gets
``PR_SET_PDEATHSIG``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

log = logging.getLogger("eurechat.directory.supervisor")

__all__ = ["supervise", "worker_main"]

READY_TIMEOUT = 30.0
STOP_GRACE = 3.0
ENV_ADDRESS = "EURECHAT_MANAGER_ADDRESS"
ENV_AUTHKEY = "EURECHAT_MANAGER_AUTHKEY"


REUSEPORT = hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")


def _listen(host: str, port: int, reuseport: bool, listen: bool = True) -> socket.socket:
    """The supervisor's socket.  With SO_REUSEPORT it is only *bound* (it
    reserves the port, ``--port 0`` included) and each worker binds and listens
    on its own socket: the kernel spreads new connections evenly over the
    workers.  Without it, the supervisor listens and the workers inherit it."""
    from .server import listening_socket
    if reuseport and port:
        # SO_REUSEPORT would let a second directory of the same user join this
        # port silently and take half its connections: first make sure the
        # port is free with a plain bind (which fails if anyone holds it).
        # (Port 0 needs no check: the kernel picks a port nobody holds.)
        probe = listening_socket(host, port, reuseport=False, listen=False)
        port = probe.getsockname()[1]
        probe.close()
    return listening_socket(host, port, reuseport, listen)


class Worker:
    """One worker slot: its process and restart bookkeeping."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.started = 0.0
        self.failures = 0


class Supervisor:
    def __init__(self, opts: argparse.Namespace, argv: List[str]) -> None:
        self.opts = opts
        self.argv = argv
        self.workers = [Worker(i) for i in range(opts.workers)]
        self.stopping = False
        self.manager = None
        self.manager_dir: Optional[str] = None
        self.address: Optional[str] = None
        self.authkey = b""
        self.sock: Optional[socket.socket] = None
        self.parent_r = self.parent_w = -1
        self.registry = None

    # -- workers -----------------------------------------------------------
    def _worker_argv(self, ready_w: int) -> List[str]:
        port = self.sock.getsockname()[1]
        return [sys.executable, "-m", "eurechat.directory", *self.argv,
                "--registry", self.opts.registry, "--data-dir", self.opts.data_dir,
                "--port", str(port), "--worker-fd",
                "reuseport" if REUSEPORT else str(self.sock.fileno()),
                "--ready-fd", str(ready_w), "--parent-fd", str(self.parent_r)]

    async def _spawn(self, worker: Worker) -> bool:
        """Start ``worker``'s process and wait for it to say it is serving."""
        ready_r, ready_w = os.pipe()
        env = dict(os.environ)
        if self.address is not None:
            env[ENV_ADDRESS] = self.address
            env[ENV_AUTHKEY] = self.authkey.hex()
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                *self._worker_argv(ready_w), env=env, stdin=subprocess.DEVNULL,
                pass_fds=(self.sock.fileno(), ready_w, self.parent_r))
        finally:
            os.close(ready_w)
        worker.started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            data = await asyncio.wait_for(
                loop.run_in_executor(None, os.read, ready_r, 16), READY_TIMEOUT)
        except asyncio.TimeoutError:
            data = b""
        finally:
            os.close(ready_r)
        if data.startswith(b"ready"):
            log.info("worker %d serving (pid %d)", worker.index, worker.proc.pid)
            return True
        log.error("worker %d (pid %d) did not start", worker.index, worker.proc.pid)
        return False

    async def _watch(self, worker: Worker) -> None:
        """Restart ``worker`` whenever it exits, until shutdown."""
        while not self.stopping:
            proc = worker.proc
            code = await proc.wait()
            if self.stopping:
                return
            log.error("worker %d (pid %d) exited with %s; restarting", worker.index,
                      proc.pid, code)
            if self.registry is not None and hasattr(self.registry, "drop_pid"):
                try:
                    await self.registry.drop_pid(proc.pid)
                except Exception as exc:
                    log.warning("presence hub: %s", exc)
            if time.monotonic() - worker.started < 5.0:
                worker.failures += 1
            else:
                worker.failures = 0
            delay = min(0.1 * (2 ** worker.failures), 10.0) if worker.failures else 0.0
            if delay:
                await asyncio.sleep(delay)
            if self.stopping:
                return
            await self._spawn(worker)

    # -- lifecycle ---------------------------------------------------------
    def start_manager(self) -> None:
        if self.opts.registry != "manager":
            return
        from .manager_registry import start_hub_manager
        self.manager_dir = tempfile.mkdtemp(prefix="eurechat-presence-")
        self.address = os.path.join(self.manager_dir, "hub.sock")
        self.authkey = os.urandom(32)
        self.manager = start_hub_manager(self.address, self.authkey)
        log.info("presence manager started (pid %s)", self.manager._process.pid)

    async def run(self) -> int:
        from .app import announce
        from .backends import make_election, make_registry
        from .checker import LivenessChecker
        from .interfaces import RegistryUnavailable

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            self.sock = _listen(self.opts.host, self.opts.port, REUSEPORT,
                                listen=not REUSEPORT)
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", self.opts.host, self.opts.port,
                      exc.strerror or exc)
            return 2
        if not REUSEPORT:
            self.sock.set_inheritable(True)
        self.parent_r, self.parent_w = os.pipe()
        os.set_inheritable(self.parent_r, True)
        watchers = []
        checker = None
        try:
            if self.opts.registry == "manager":
                from .manager_registry import ManagerRegistry
                self.registry = ManagerRegistry(self.address, self.authkey, subscribe=False)
            else:
                self.registry = make_registry(self.opts.registry, follow=False)
            try:
                await self.registry.start()
            except RegistryUnavailable as exc:
                log.error("cannot start: %s", exc)
                self.registry = None
                return 2
            # Open the account store once, here, so that an unreachable
            # PostgreSQL or an unusable data directory is one line and exit 2
            # (as with one worker), not N workers dying at start-up.
            from .backends import make_accounts
            from .interfaces import AccountsUnavailable
            probe = make_accounts(self.opts.accounts, self.opts.data_dir)
            try:
                await probe.start()
            except AccountsUnavailable as exc:
                log.error("cannot start: %s", exc)
                return 2
            finally:
                await probe.close()
            results = await asyncio.gather(*(self._spawn(w) for w in self.workers))
            if not all(results):
                log.error("not every worker started; giving up")
                return 1
            for w in self.workers:
                watchers.append(asyncio.ensure_future(self._watch(w)))
            election = make_election(self.opts.registry, lease=self.opts.lease,
                                     shards=self.opts.checker_shards)
            await election.start()
            checker = LivenessChecker(self.registry, election, self.opts.check_interval,
                                      self.opts.probe_timeout, self.opts.probe_concurrency)
            checker.start()
            host, port = self.sock.getsockname()[:2]
            manager_lost = self._watch_manager(loop, stop)
            announce(host, port)
            await stop.wait()
            if manager_lost.is_set():
                # Presence lived in that process: it is gone for good, and every
                # BIND would now fail.  Serving on half-alive would hide it; a
                # clean exit 1 lets the service manager restart the directory,
                # after which peers log in and BIND again on their own.
                log.error("presence manager (pid %s) died: registrations lost; "
                          "stopping the directory (exit 1)", self.manager._process.pid)
                return 1
            log.info("shutting down")
            return 0
        finally:
            self.stopping = True
            if checker is not None:
                await checker.close()
                await checker.election.close()
            await self._stop_workers()
            for task in watchers:
                task.cancel()
            if self.registry is not None:
                try:
                    await asyncio.wait_for(self.registry.close(), 1.0)
                except Exception:
                    pass
            self.sock.close()
            os.close(self.parent_w)
            os.close(self.parent_r)

    def _watch_manager(self, loop: asyncio.AbstractEventLoop,
                       stop: asyncio.Event) -> asyncio.Event:
        """An event set (together with ``stop``) when the Manager process dies."""
        lost = asyncio.Event()
        if self.manager is None:
            return lost
        sentinel = self.manager._process.sentinel

        def gone() -> None:
            loop.remove_reader(sentinel)
            if not self.stopping and not stop.is_set():
                lost.set()
                stop.set()

        loop.add_reader(sentinel, gone)
        return lost

    async def _stop_workers(self) -> None:
        procs = [w.proc for w in self.workers if w.proc is not None
                 and w.proc.returncode is None]
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        if procs:
            done, pending = await asyncio.wait(
                [asyncio.ensure_future(p.wait()) for p in procs], timeout=STOP_GRACE)
            for proc in procs:
                if proc.returncode is None:
                    log.warning("worker pid %d did not stop in time; killing", proc.pid)
                    try:
                        proc.kill()
                    except ProcessLookupError:
                        pass
            if pending:
                await asyncio.wait(pending, timeout=1.0)

    def stop_manager(self) -> None:
        if self.manager is not None:
            try:
                self.manager.shutdown()
            except Exception as exc:
                log.warning("stopping the presence manager: %s", exc)
            self.manager = None
        if self.manager_dir:
            shutil.rmtree(self.manager_dir, ignore_errors=True)


def supervise(opts: argparse.Namespace, argv: List[str]) -> int:
    """Run the multi-worker directory; returns the exit code."""
    from .app import raise_nofile
    raise_nofile(opts.probe_concurrency + 256)  # the checker's probes
    sup = Supervisor(opts, [a for a in argv if a != "serve"])
    sup.start_manager()  # first: before this process has any thread
    try:
        return asyncio.run(sup.run())
    finally:
        sup.stop_manager()


def worker_main(opts: argparse.Namespace) -> int:
    """Body of a worker process started by the supervisor."""
    from .app import install_uvloop, serve

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if opts.worker_fd == "reuseport":
        from .server import listening_socket
        sock = listening_socket(opts.host, opts.port, reuseport=True)  # joins the group
    else:
        sock = socket.socket(fileno=int(opts.worker_fd))
        sock.setblocking(False)
    address = os.environ.pop(ENV_ADDRESS, None)
    authkey_hex = os.environ.pop(ENV_AUTHKEY, "")
    install_uvloop(not opts.no_uvloop)

    def ready(host: str, port: int) -> None:
        if opts.ready_fd is not None:
            os.write(opts.ready_fd, b"ready\n")
            os.close(opts.ready_fd)

    async def main() -> int:
        if opts.parent_fd is not None:
            # EOF on this pipe: the supervisor is gone, so are we.
            loop = asyncio.get_running_loop()
            loop.add_reader(opts.parent_fd, lambda: os.kill(os.getpid(), signal.SIGTERM))
        return await serve(opts, sock=sock, ready=ready, run_checker=False,
                           manager_address=address,
                           authkey=bytes.fromhex(authkey_hex) if authkey_hex else None,
                           signals=(signal.SIGTERM,))

    return asyncio.run(main())
