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

The Manager heals too.  When it dies, the registrations it held are gone
(nothing else has them), and every worker is bound to a dead address.  The
supervisor logs one WARNING, starts a new Manager, then replaces every worker
with a fresh one bound to it -- the new workers first, the old ones stopped
only once all new ones have started and at least one serves (if none can,
the new Manager died too: the old ones keep the port until the next
replacement), so the port never lacks a listener.  Stopping
the old workers closes their sessions, and that is what rebuilds presence:
peers re-BIND when their directory connection drops.  (Reconnecting the
old workers in place would keep those sessions open, and their peers would
stay unlisted until they happened to check.)  A Manager that dies more than
``--manager-restarts`` times within ``--manager-restart-window`` seconds is
not papered over any longer: ERROR, exit 1, for the service manager (and a
human) to look at.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from typing import Deque, Iterator, List, Optional, Set

from ..backoff import delay
from . import metrics
from .sockets import listening_socket

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
        self.serving = False           # its process said "ready"
        self.spawn_error: Optional[BaseException] = None  # why its last start failed
        self.address: Optional[str] = None  # the Manager it was started on
        # Held while this slot's process is being (re)started: a crash restart
        # and a Manager replacement never both start a process for one slot.
        # (Made in the running loop: before 3.10 a Lock binds to a loop.)
        self.lock: asyncio.Lock
        # Set whenever ``proc`` is replaced, so the slot's watcher follows the
        # new process at once instead of waiting for the old one to exit.
        self.replaced: asyncio.Event


def _backoff(failures: int) -> float:
    """Delay before restarting a slot after ``failures`` quick failures in a
    row (a process that died within 5 s of its start, or could not be started
    at all): 0.2 s, 0.4 s, ... at most 10 s."""
    return delay(failures, 0.1, 10.0)


def _why(exc: BaseException) -> str:
    """``EMFILE (Too many open files)``, for the log."""
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, f"errno {exc.errno}")
        return f"{name} ({exc.strerror or os.strerror(exc.errno)})"
    return f"{type(exc).__name__}: {exc}"


async def _read_when_ready(fd: int) -> bytes:
    """The first read from the pipe ``fd`` (its EOF: ``b""``), awaited on the
    event loop.  Not on an executor thread: a spawn is retried exactly when
    threads may be impossible to create, and a thread blocked on a worker
    that hangs would stay blocked (one fewer for everything else)."""
    loop = asyncio.get_running_loop()
    readable = loop.create_future()
    loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
    try:
        await readable
    finally:
        loop.remove_reader(fd)
    return os.read(fd, 16)


def _stop_unwatched(exc: BaseException) -> None:
    """asyncio starts the process first and registers it with its child
    watcher second (a thread per child before Python 3.12, a pidfd since).
    When *that* fails -- no thread, no descriptor to be had: the very
    conditions under which spawns fail -- the exception leaves a running
    process that nobody will ever wait for: a worker the supervisor does not
    know, serving on the port (and, if the Manager is replaced, bound to a
    dead one for ever), then a zombie -- one more at each retry.  asyncio
    does not stop it (its clean-up covers only a failure after that step),
    but its transport is in the traceback: kill the process and reap it
    (SIGKILL: it exits at once).  If a later asyncio names things otherwise,
    this finds nothing and changes nothing."""
    tb = exc.__traceback__
    while tb is not None:
        transport = tb.tb_frame.f_locals.get("transp")
        if isinstance(transport, asyncio.SubprocessTransport):
            popen = transport.get_extra_info("subprocess")
            if isinstance(popen, subprocess.Popen):
                if popen.poll() is None:
                    popen.kill()
                    try:
                        popen.wait(5.0)
                    except subprocess.TimeoutExpired:  # reaped by Popen's own clean-up later
                        log.warning("process %d did not die after SIGKILL", popen.pid)
                transport.close()  # reaped: nothing left for it to kill
                log.debug("killed process %d: started, but could not be watched", popen.pid)
            return
        tb = tb.tb_next


def _death(code: Optional[int]) -> str:
    """``exited with code 3`` / ``was killed by SIGKILL``, for the log."""
    if code is None:
        return "died"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    def __init__(self, opts: argparse.Namespace, argv: List[str]) -> None:
        self.opts = opts
        self.argv = argv
        self.workers = [Worker(i) for i in range(opts.workers)]
        self.stopping = False
        self._sigint_blocks = 0      # spawns under way with SIGINT blocked
        self._sigint_mask: set = set()   # this thread's mask before the first of them
        self.manager = None
        self.manager_dir: Optional[str] = None
        self.address: Optional[str] = None
        self.authkey = b""
        self.sock: Optional[socket.socket] = None
        self.parent_r = self.parent_w = -1
        self.registry = None
        self.checker = None
        self.generation = 0          # Managers started so far (names their sockets)
        self.manager_deaths: Deque[float] = deque()
        # Workers of an earlier generation (a dead Manager), kept listening
        # until every slot serves on the current Manager, then retired.
        self.previous: Set[asyncio.subprocess.Process] = set()
        self.retiring: Set[asyncio.subprocess.Process] = set()  # old workers being stopped
        self.exit_code = 0
        self._manager_died: Optional[asyncio.Event] = None

    # -- workers -----------------------------------------------------------
    def _worker_argv(self, ready_w: int) -> List[str]:
        port = self.sock.getsockname()[1]
        return [sys.executable, "-m", "eurechat.directory", *self.argv,
                "--registry", self.opts.registry, "--data-dir", self.opts.data_dir,
                "--port", str(port), "--worker-fd",
                "reuseport" if REUSEPORT else str(self.sock.fileno()),
                "--ready-fd", str(ready_w), "--parent-fd", str(self.parent_r)]

    @contextlib.contextmanager
    def _children_start_with_sigint_blocked(self) -> Iterator[None]:
        """Fork workers with SIGINT blocked (the mask is inherited through
        ``exec``); ``worker_main`` ignores it and only then unblocks it.

        A Ctrl-C (SIGINT to the whole process group) that reaches a worker
        still starting its interpreter would raise KeyboardInterrupt inside
        ``site``: "Fatal Python error" and a traceback in the log of a
        directory shutting down cleanly.  Blocked, the signal stays pending
        in the new process and is discarded when ``worker_main`` sets
        SIG_IGN.

        Nested spawns (a generation started at once) share one block: the
        mask is restored when the last of them has forked.  In this process
        a SIGINT is not lost meanwhile: another thread takes it, or it waits
        (milliseconds) for the unblock."""
        if self._sigint_blocks == 0:
            self._sigint_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        self._sigint_blocks += 1
        try:
            yield
        finally:
            self._sigint_blocks -= 1
            if self._sigint_blocks == 0:
                signal.pthread_sigmask(signal.SIG_SETMASK, self._sigint_mask)

    async def _spawn(self, worker: Worker, quiet: bool = False) -> bool:
        """Start ``worker``'s process and wait for it to say it is serving.

        The process may not start at all: ``pipe()``, ``fork()`` or ``exec()``
        fail with EMFILE/ENFILE (descriptor limits), EAGAIN (process limit),
        ENOMEM...  That must never end the slot's watcher (the slot would stay
        empty for the life of the directory, which would look alive): the
        slot is left without a process (``proc`` None), the failure counts as
        a quick one for the restart backoff, and the slot's watcher retries.
        Nothing opened here outlives a failed attempt.  ``quiet``: the caller
        (start-up) reports the failure itself."""
        env = dict(os.environ)
        worker.serving, worker.address = False, self.address
        if self.address is not None:
            env[ENV_ADDRESS] = self.address
            env[ENV_AUTHKEY] = self.authkey.hex()
        try:
            ready_r, ready_w = os.pipe()
        except OSError as exc:
            return self._spawn_failed(worker, exc, quiet)
        try:
            try:
                with self._children_start_with_sigint_blocked():
                    proc = await asyncio.create_subprocess_exec(
                        *self._worker_argv(ready_w), env=env, stdin=subprocess.DEVNULL,
                        pass_fds=(self.sock.fileno(), ready_w, self.parent_r))
            finally:
                os.close(ready_w)
        except (OSError, RuntimeError) as exc:
            # RuntimeError: "can't start new thread" (the child watcher's).
            os.close(ready_r)
            _stop_unwatched(exc)
            return self._spawn_failed(worker, exc, quiet)
        worker.proc = proc
        worker.replaced.set()
        worker.started = time.monotonic()
        try:
            data = await asyncio.wait_for(_read_when_ready(ready_r), READY_TIMEOUT)
        except (asyncio.TimeoutError, OSError):
            data = b""
        finally:
            os.close(ready_r)
        if data.startswith(b"ready"):
            log.info("worker %d serving (pid %d)", worker.index, proc.pid)
            worker.serving = True
            worker.spawn_error = None
            return True
        log.error("worker %d (pid %d) did not start", worker.index, proc.pid)
        if proc.returncode is None:
            # Hung, or it cannot tell us: a process that does not serve must
            # not hold the slot (its watcher would wait for it for ever).
            # Killed, it is restarted like any crashed worker.
            try:
                proc.kill()
            except ProcessLookupError:
                pass
        return False

    def _spawn_failed(self, worker: Worker, exc: BaseException, quiet: bool) -> bool:
        """No process could be started for ``worker``: leave the slot empty (its
        watcher notices -- ``replaced`` -- and retries after the backoff)."""
        worker.proc = None
        worker.failures += 1
        worker.spawn_error = exc
        worker.replaced.set()
        if not quiet:
            log.error("worker %d: cannot start a process: %s; will retry in %.1f s",
                      worker.index, _why(exc), _backoff(worker.failures))
        return False

    async def _watch(self, worker: Worker) -> None:
        """Restart ``worker`` whenever it exits, until shutdown.  Follows the
        slot, not a process: when a Manager replacement puts a new process in
        the slot, the old one (kept listening until the new generation serves)
        is no longer watched, and the new one is -- also if it dies at start.
        A slot left without a process (its last start failed) is started
        again after the backoff, as often as it takes."""
        while not self.stopping:
            proc = worker.proc
            if proc is not None:
                worker.replaced.clear()
                exited = asyncio.ensure_future(proc.wait())
                swapped = asyncio.ensure_future(worker.replaced.wait())
                try:
                    await asyncio.wait({exited, swapped},
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    exited.cancel()
                    swapped.cancel()
                if self.stopping:
                    return
                if worker.proc is not proc or proc.returncode is None:
                    continue  # replaced on purpose (a new Manager): watch its successor
                code = proc.returncode
                log.error("worker %d (pid %d) exited with %s; restarting", worker.index,
                          proc.pid, code)
                metrics.worker_exited(proc.pid, restarted=True)
                if self.registry is not None:
                    try:
                        await self.registry.drop_pid(proc.pid)
                    except Exception as exc:
                        log.warning("presence hub: %s", exc)
                if time.monotonic() - worker.started < 5.0:
                    worker.failures += 1
                else:
                    worker.failures = 0
            # else: its last start failed (and was counted as a quick failure).
            delay = _backoff(worker.failures) if worker.failures else 0.0
            if delay:
                await asyncio.sleep(delay)
            if self.stopping:
                return
            async with worker.lock:
                if self.stopping:
                    return
                if worker.proc is not proc:
                    continue  # replaced meanwhile (a new Manager)
                await self._spawn(worker)
            if self.previous:
                await self._retire_previous()  # the first to serve on this Manager

    def _stop_if_failed(self, task: asyncio.Future, stop: asyncio.Event, what: str) -> None:
        """A bug in a background task the directory relies on (a slot's
        watcher, the Manager keeper) must not leave a directory that looks
        alive but silently stopped restarting workers or healing: say so and
        stop (exit 1)."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("%s failed: %r; stopping the directory (exit 1)", what,
                  task.exception(), exc_info=task.exception())
        self.exit_code = 1
        stop.set()

    async def _replace_all(self) -> int:
        """A fresh process for every slot (bound to the current Manager); the
        old ones are stopped, all at once, only when every new one has started
        (or failed to) and at least one serves.  So with SO_REUSEPORT the port
        always has listeners, and a peer whose old session is closed
        reconnects to a new worker -- were an old worker still listening, it
        could land there and have its BIND refused (``ERR directory
        unavailable``).  If no new worker serves (the new Manager died too,
        while they started), the old ones keep the port (logins, QUERY from
        their last view) until a later generation, or the crash restart of a
        slot, brings one up.  A slot whose process already serves on the
        current Manager (restarted meanwhile after a crash) is left alone.
        Returns how many slots serve on it."""
        async def renew(worker: Worker) -> bool:
            async with worker.lock:
                if self.stopping:
                    return False
                old = worker.proc
                if old is not None and old.returncode is None:
                    if worker.serving and worker.address == self.address:
                        return True  # already on this Manager
                    self.previous.add(old)  # a shutdown meanwhile stops it too
                return await self._spawn(worker)

        results = await asyncio.gather(*(renew(w) for w in self.workers))
        await self._retire_previous()
        # A slot's crash restart may have begun retiring the old generation
        # already: "replaced" is only logged once the old workers are gone.
        if self.retiring and self._any_serving():
            await asyncio.gather(*(p.wait() for p in list(self.retiring)))
        return sum(results)

    def _any_serving(self) -> bool:
        return any(w.serving and w.address == self.address and w.proc is not None
                   and w.proc.returncode is None for w in self.workers)

    async def _retire_previous(self) -> None:
        """Stop the earlier generation once a worker serves on the current
        Manager (not before: they are the port's only listeners meanwhile).
        Called when a replacement has tried every slot, and after a crashed
        slot was restarted."""
        if not self.previous or self.stopping or not self._any_serving():
            return
        old, self.previous = self.previous, set()
        self.retiring |= old
        await asyncio.gather(*(self._retire(p) for p in old))

    async def _retire(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM (its sessions are closed, their peers reconnect elsewhere);
        SIGKILL after STOP_GRACE."""
        try:
            if proc.returncode is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    await asyncio.wait_for(proc.wait(), STOP_GRACE)
                except asyncio.TimeoutError:
                    log.warning("old worker pid %d did not stop in time; killing", proc.pid)
                    try:
                        proc.kill()
                    except ProcessLookupError:
                        pass
                    await proc.wait()
        finally:
            # Cancelled (a shutdown) before it exited: it stays in ``retiring``,
            # so the shutdown stops it -- SIGKILL included -- instead of
            # leaving it behind.
            if proc.returncode is not None:
                self.retiring.discard(proc)
                metrics.worker_exited(proc.pid)

    # -- lifecycle ---------------------------------------------------------
    def start_manager(self, method: Optional[str] = None) -> None:
        """Start a Manager (the first with fork, before any thread exists;
        replacements with spawn, see ``start_hub_manager``).  Each gets a new
        socket and authkey: nothing still talking to a dead one can reach the
        new one by mistake."""
        if self.opts.registry != "manager":
            return
        from .presence.manager import start_hub_manager
        if self.manager_dir is None:
            self.manager_dir = tempfile.mkdtemp(prefix="eurechat-presence-")
        self.generation += 1
        self.address = os.path.join(self.manager_dir, f"hub-{self.generation}.sock")
        self.authkey = os.urandom(32)
        self.manager = start_hub_manager(self.address, self.authkey, method=method)
        log.info("presence manager started (pid %s)", self.manager._process.pid)

    async def run(self) -> int:
        from .app import (
            announce,
            close_backends,
            open_backends,
            start_checker,
            stop_checker,
            stop_event,
        )
        from .backends import make_accounts, make_registry

        loop = asyncio.get_running_loop()
        stop = stop_event((signal.SIGINT, signal.SIGTERM))
        for w in self.workers:
            w.lock = asyncio.Lock()
            w.replaced = asyncio.Event()
        try:
            self.sock = _listen(self.opts.host, self.opts.port, REUSEPORT,
                                listen=not REUSEPORT)
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", self.opts.host, self.opts.port,
                      exc.strerror or exc)
            return 2
        if not REUSEPORT:
            self.sock.set_inheritable(True)
        if self.opts.metrics:
            from .app import start_metrics
            if not start_metrics(self.opts, multiprocess=True):
                self.sock.close()
                return 2
            metrics.count_registrations(lambda: self.registry.snapshot())
        self.parent_r, self.parent_w = os.pipe()
        os.set_inheritable(self.parent_r, True)
        watchers = []
        checker = None
        keeper: Optional[asyncio.Future] = None
        try:
            # The supervisor's own client: writes and snapshots for the checker,
            # no read view.
            registry = make_registry(self.opts.registry, manager_address=self.address,
                                     authkey=self.authkey, follow=False)
            if not await open_backends([registry]):
                return 2
            self.registry = registry
            # Open the account store once, here, so that an unreachable
            # PostgreSQL or an unusable data directory is one line and exit 2
            # (as with one worker), not N workers dying at start-up.
            probe = make_accounts(self.opts.accounts, self.opts.data_dir)
            if not await open_backends([probe]):
                return 2
            await close_backends([probe])
            # The identity once, here: created before any worker exists (no
            # race between them), its fingerprint logged once.
            from ..tls.identity import IdentityError
            from .app import chosen_loop, load_identity, warn_stock_loop
            try:
                identity, _ = load_identity(self.opts)
            except IdentityError as exc:
                log.error("cannot start: %s", exc)
                return 2
            log.info("directory fingerprint %s", identity.fingerprint)
            warn_stock_loop(chosen_loop(not self.opts.no_uvloop))
            # A SIGINT/SIGTERM while the workers start ends the start-up at
            # once: each worker may take up to READY_TIMEOUT to say it serves,
            # and N of them on a loaded machine much longer.  Cancelling kills
            # a process whose spawn was under way; those already spawned are
            # stopped below with everything else.
            starting = asyncio.ensure_future(asyncio.gather(
                *(self._spawn(w, quiet=True) for w in self.workers)))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                log.info("stopped during start-up")
                return 0
            results = starting.result()
            unstarted = [w for w in self.workers if w.proc is None]
            if unstarted:
                # Not retried: at start-up there is nothing to protect, and a
                # limit that stops the first processes is a configuration to
                # fix (a service manager restarts us); one line says which.
                log.error("cannot start: %d of %d worker processes could not be started "
                          "(%s); stopping (exit 1)", len(unstarted), len(self.workers),
                          _why(unstarted[0].spawn_error))
                return 1
            if not all(results):
                log.error("not every worker started; giving up")
                return 1
            for w in self.workers:
                task = asyncio.ensure_future(self._watch(w))
                task.add_done_callback(
                    lambda t: self._stop_if_failed(t, stop, "worker watcher"))
                watchers.append(task)
            checker = self.checker = await start_checker(self.opts, self.registry)
            host, port = self.sock.getsockname()[:2]
            if self.manager is not None:
                self._manager_died = asyncio.Event()
                self._watch_manager(loop)
                keeper = asyncio.ensure_future(self._keep_manager(stop))
                keeper.add_done_callback(
                    lambda t: self._stop_if_failed(t, stop, "presence manager keeper"))
            announce(host, port)
            await stop.wait()
            if self.exit_code:
                return self.exit_code
            log.info("shutting down")
            return 0
        finally:
            self.stopping = True
            if keeper is not None:
                keeper.cancel()
                await asyncio.gather(keeper, return_exceptions=True)
            await stop_checker(checker)
            await self._stop_workers()
            for task in watchers:
                task.cancel()
            if self.registry is not None:
                await close_backends([self.registry])
            self.sock.close()
            os.close(self.parent_w)
            os.close(self.parent_r)

    # -- the Manager's death ------------------------------------------------
    def _watch_manager(self, loop: asyncio.AbstractEventLoop) -> None:
        """Set ``_manager_died`` when the current Manager process ends (its
        sentinel becomes readable: an event, no polling)."""
        manager = self.manager
        sentinel = manager._process.sentinel

        def gone() -> None:
            loop.remove_reader(sentinel)
            if not self.stopping and self.manager is manager:
                self._manager_died.set()

        loop.add_reader(sentinel, gone)

    async def _keep_manager(self, stop: asyncio.Event) -> None:
        """Each time the Manager dies: count it, then give up (exit 1) or start
        a new one and move every worker onto it."""
        loop = asyncio.get_running_loop()
        restarts, window = self.opts.manager_restarts, self.opts.manager_restart_window
        while not self.stopping:
            await self._manager_died.wait()
            self._manager_died.clear()
            if self.stopping or stop.is_set():
                return
            dead = self.manager
            pid = dead._process.pid
            dead.shutdown()  # reaps it (is_alive() is False: nothing is sent)
            how = _death(dead._process.exitcode)
            now = time.monotonic()
            self.manager_deaths.append(now)
            while now - self.manager_deaths[0] > window:
                self.manager_deaths.popleft()
            deaths = len(self.manager_deaths)
            if deaths > restarts:
                log.error("presence manager (pid %d) %s: registrations lost; %d deaths "
                          "within %g s (--manager-restarts %d): giving up, stopping the "
                          "directory (exit 1)", pid, how, deaths, window, restarts)
                self.exit_code = 1
                stop.set()
                return
            log.warning("presence manager (pid %d) %s: registrations lost; starting a new "
                        "one and restarting the %d workers on it (peers BIND again when "
                        "they reconnect) [restart %d of at most %d within %g s]", pid, how,
                        len(self.workers), deaths, restarts, window)
            started = time.monotonic()
            metrics.manager_heal()
            try:
                os.unlink(self.address)
            except OSError:
                pass
            try:
                self.start_manager(method="spawn")  # blocks this loop ~0.1-0.3 s
            except Exception as exc:
                if self.stopping or stop.is_set():
                    return
                log.error("cannot start a new presence manager: %r; stopping the directory "
                          "(exit 1)", exc)
                self.exit_code = 1
                stop.set()
                return
            self._watch_manager(loop)
            await self._reconnect_registry()
            serving = await self._replace_all()
            if self.stopping:
                return
            log.log(logging.INFO if serving == len(self.workers) else logging.WARNING,
                    "presence manager replaced in %.2f s: new manager pid %d, %d of %d "
                    "workers serving%s", time.monotonic() - started,
                    self.manager._process.pid, serving, len(self.workers),
                    "" if serving == len(self.workers) else
                    " (the previous workers keep the port until one does)" if not serving
                    else " (the others are restarted)")

    async def _reconnect_registry(self) -> None:
        """The supervisor's own hub client (checker, ``drop_pid``) follows the
        new Manager."""
        from .backends import make_registry
        from .errors import RegistryUnavailable
        old = self.registry
        new = make_registry("manager", manager_address=self.address, authkey=self.authkey,
                            follow=False)
        try:
            await new.start()
        except RegistryUnavailable as exc:
            # The new Manager is already gone: its death is being handled.
            log.warning("presence hub: %s", exc)
            await new.close()
            return
        self.registry = new
        if self.checker is not None:
            self.checker.registry = new
        if old is not None:
            try:
                await asyncio.wait_for(old.close(), 1.0)
            except Exception:
                pass

    async def _stop_workers(self) -> None:
        procs = [w.proc for w in self.workers if w.proc is not None
                 and w.proc.returncode is None]
        procs += [p for p in self.retiring | self.previous
                  if p.returncode is None and p not in procs]
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
    # The workers' metric files: a private directory (they inherit its name).
    metrics_dir = metrics.make_multiprocess_dir() if opts.metrics else None
    sup.start_manager()  # first: before this process has any thread
    try:
        return asyncio.run(sup.run())
    finally:
        sup.stop_manager()
        if metrics_dir:
            metrics.remove_multiprocess_dir(metrics_dir)


def worker_main(opts: argparse.Namespace) -> int:
    """Body of a worker process started by the supervisor."""
    from .app import install_uvloop, serve

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Started with SIGINT blocked (see Supervisor._children_start_with_sigint_blocked):
    # one that came meanwhile was discarded by SIG_IGN above.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if opts.worker_fd == "reuseport":
        sock = listening_socket(opts.host, opts.port, reuseport=True)  # joins the group
    else:
        sock = socket.socket(fileno=int(opts.worker_fd))
        sock.setblocking(False)
    address = os.environ.pop(ENV_ADDRESS, None)
    authkey_hex = os.environ.pop(ENV_AUTHKEY, "")
    install_uvloop(not opts.no_uvloop)
    if opts.metrics:
        metrics.enable(multiprocess=True)

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
