"""Presence shared by the workers of one host through a ``multiprocessing.Manager``.

The Manager process (started by the supervisor) holds one ``PresenceHub``:
the registrations (source of truth), a numbered change log, and the
subscribed workers.  A Manager proxy call is a round trip to another process,
so QUERY never makes one: each worker keeps a ``ReadView`` and a feed
thread long-polls ``hub.changes(since)``, applies the changes on the event
loop, and only then polls again (so "polled with ``since=N``" means "has
applied everything up to N").

The guarantee (read-your-writes across workers): a BIND/LEAVE is ACKed only
after the hub has recorded it *and* every live worker has applied it to its
view, so once a client holds the ACK, a QUERY on any worker sees it.  A worker
that does not catch up within ``ack_wait`` (1 s; a stuck or dying process)
does not hold the others hostage: the write is ACKed anyway and that worker
converges as soon as it polls again.  A restarted worker subscribes afresh
and loads a snapshot, and a worker that fell behind the log gets a snapshot
instead of the changes it missed.  Registrations live in the Manager, so
killing a worker loses none.  Killing the Manager loses them all: the
supervisor then starts a new Manager and new workers, and presence comes back
as peers re-BIND (``supervisor.py``); this client never reconnects by itself.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import threading
import time
from multiprocessing.managers import BaseManager
from typing import Deque, Dict, List, Optional, Sequence, Tuple

from ...backoff import Backoff
from .base import Registration, Registry, RegistryUnavailable
from .view import ReadView

log = logging.getLogger("eurechat.directory.manager")

__all__ = ["PresenceHub", "HubManager", "ManagerRegistry", "start_hub_manager"]

POLL_TIMEOUT = 1.0   # a feed poll returns at least this often (liveness of subscribers)
ACK_WAIT = 1.0       # longest a write waits for the other workers' views
LOG_SIZE = 65536     # changes kept for subscribers that are briefly behind
_STALE = POLL_TIMEOUT + 4.0

RegTuple = tuple  # the fields of a Registration: (name, address, port[, True[, fp]])


def _stored(reg) -> RegTuple:
    """How the hub keeps a registration: ``(name, address, port)``, a fourth
    field ``True`` only for one probed over TLS (``Registration.tls``), and a
    fifth, the enrolled key's fingerprint, only when there is one."""
    base = (str(reg[0]), str(reg[1]), int(reg[2]))
    if len(reg) > 4 and reg[4]:
        return base + (bool(reg[3]), str(reg[4]))
    return base + (True,) if len(reg) > 3 and reg[3] else base


class PresenceHub:
    """Lives in the Manager process; every method is called from its threads."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._regs: Dict[str, RegTuple] = {}
        self._log: Deque[Tuple[int, str, tuple]] = collections.deque(maxlen=LOG_SIZE)
        self._seq = 0
        self._subs: Dict[int, List[float]] = {}   # id -> [applied seq, last poll, pid]
        self._next = 0

    # -- subscribers -------------------------------------------------------
    def subscribe(self, pid: int) -> Tuple[int, int, List[RegTuple]]:
        with self._cond:
            self._next += 1
            self._subs[self._next] = [self._seq, time.monotonic(), pid]
            return self._next, self._seq, list(self._regs.values())

    def unsubscribe(self, sub: int) -> None:
        with self._cond:
            self._subs.pop(sub, None)
            self._cond.notify_all()

    def drop_pid(self, pid: int) -> None:
        """The supervisor saw worker ``pid`` die: stop waiting for it."""
        with self._cond:
            for sub in [s for s, v in self._subs.items() if v[2] == pid]:
                del self._subs[sub]
            self._cond.notify_all()

    def changes(self, sub: int, since: int, timeout: float = POLL_TIMEOUT
                ) -> Tuple[int, Optional[List[tuple]], Optional[List[RegTuple]]]:
        """``(seq, changes, None)`` after ``since``, or ``(seq, None, snapshot)``
        when the log no longer reaches back that far (or ``sub`` is unknown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            state = self._subs.get(sub)
            if state is None:
                return self._seq, None, list(self._regs.values())
            state[0], state[1] = since, time.monotonic()
            self._cond.notify_all()  # writers wait for applied seqs
            while self._seq <= since:
                left = deadline - time.monotonic()
                if left <= 0:
                    return self._seq, [], None
                self._cond.wait(left)
            state[1] = time.monotonic()
            if not self._log or self._log[0][0] > since + 1:
                return self._seq, None, list(self._regs.values())
            out = [(seq, op, data) for seq, op, data in self._log if seq > since]
            return self._seq, out, None

    def _commit(self, op: str, data: tuple) -> int:
        self._seq += 1
        self._log.append((self._seq, op, data))
        self._cond.notify_all()
        return self._seq

    def _wait_applied(self, seq: int, wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            now = time.monotonic()
            behind = [s for s in self._subs.values() if s[0] < seq and now - s[1] < _STALE]
            if not behind or now >= deadline:
                return
            self._cond.wait(deadline - now)

    # -- writes and reads --------------------------------------------------
    def bind(self, reg: RegTuple, wait: float = ACK_WAIT) -> int:
        reg = _stored(reg)
        with self._cond:
            self._regs[reg[0]] = reg
            seq = self._commit("bind", reg)
            self._wait_applied(seq, wait)
            return seq

    def remove(self, name: str, expected: Optional[RegTuple] = None,
               wait: float = ACK_WAIT) -> Tuple[bool, int]:
        with self._cond:
            cur = self._regs.get(name)
            if cur is None or (expected is not None and _stored(expected) != cur):
                return False, self._seq
            del self._regs[name]
            seq = self._commit("remove", (name, cur))
            self._wait_applied(seq, wait)
            return True, seq

    def snapshot(self) -> List[RegTuple]:
        with self._cond:
            return list(self._regs.values())

    def count(self) -> int:
        with self._cond:
            return len(self._regs)


_HUB: Optional[PresenceHub] = None
_HUB_LOCK = threading.Lock()


def _get_hub() -> PresenceHub:
    global _HUB
    with _HUB_LOCK:
        if _HUB is None:
            _HUB = PresenceHub()
        return _HUB


class HubManager(BaseManager):
    """The Manager serving the single ``PresenceHub``."""


HubManager.register("get_hub", callable=_get_hub)


def _manager_init() -> None:
    """In the Manager process: Ctrl-C and a SIGTERM sent to the whole process
    group are the supervisor's business (it shuts the Manager down last; were
    the Manager first to go, the supervisor would take it for a crash), and the
    Manager must not outlive the supervisor even after a kill -9."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The supervisor starts us with both blocked (see ``start_hub_manager``):
    # one that arrived meanwhile was discarded by SIG_IGN above.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_hub_manager(address: str, authkey: bytes, method: Optional[str] = None
                      ) -> HubManager:
    """Start the Manager process.

    ``method`` None: ``fork`` where available -- the supervisor starts its
    first Manager before it has any thread, and a fork is fast.  A
    *replacement* Manager (the first one died) is started with ``spawn``: by
    then the supervisor runs threads (executors, proxy I/O), and a fork of a
    threaded process may inherit a lock some other thread held at that
    instant and hang.  Call it from the thread that lives as long as the
    supervisor (its main thread): ``PR_SET_PDEATHSIG`` fires when the
    *thread* that created the child ends."""
    import multiprocessing
    methods = multiprocessing.get_all_start_methods()
    if method is None:
        method = "fork" if "fork" in methods else "spawn"
    ctx = multiprocessing.get_context(method)
    manager = HubManager(address=address, authkey=authkey, ctx=ctx)
    # A Ctrl-C (or a service manager's group SIGTERM) in the instant between
    # the child's creation and its initializer would kill it -- and the
    # supervisor would take that for a Manager that cannot start.  Blocked
    # here, such a signal waits in the caller (delivered on unblocking, so no
    # shutdown request is lost) and, in the child, is discarded by SIG_IGN.
    import signal
    if method != "fork":
        # spawn starts multiprocessing's resource tracker on first use, and that
        # *unblocks* SIGINT/SIGTERM afterwards: start it before blocking.
        from multiprocessing import resource_tracker
        resource_tracker.ensure_running()
    sigs = {signal.SIGINT, signal.SIGTERM}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        manager.start(initializer=_manager_init)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    manager.get_hub()  # create it now: workers must find it ready
    return manager


_UNAVAILABLE_ERRORS = (OSError, EOFError, BrokenPipeError, ConnectionError)


class ManagerRegistry(Registry):
    """A worker's (or the supervisor's) client of the hub."""

    def __init__(self, address, authkey: Optional[bytes], subscribe: bool = True) -> None:
        self.address = address
        self.authkey = authkey
        self.subscribe = subscribe
        self.view = ReadView()
        self.query = self.view.query  # type: ignore[method-assign]  # hot path: no hop
        self._hub = None
        self._sub: Optional[int] = None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="manager-io")
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._closing = threading.Event()
        self._feed: Optional[threading.Thread] = None
        self._waiters: List[Tuple[int, asyncio.Future]] = []

    async def _call(self, fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except _UNAVAILABLE_ERRORS as exc:
            raise RegistryUnavailable(f"presence manager unreachable: {exc!r}") from exc

    def _connect(self):
        manager = HubManager(address=self.address, authkey=self.authkey)
        manager.connect()
        return manager.get_hub()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._hub = await self._call(self._connect)
        if self.subscribe:
            sub, seq, regs = await self._call(self._hub.subscribe, os.getpid())
            self._sub = sub
            self._apply_snapshot(seq, regs)
            self._feed = threading.Thread(target=self._follow, name="presence-feed",
                                          daemon=True)
            self._feed.start()

    async def close(self) -> None:
        self._closing.set()
        if self._sub is not None and self._hub is not None:
            try:
                await asyncio.wait_for(self._call(self._hub.unsubscribe, self._sub), 1.0)
            except (RegistryUnavailable, asyncio.TimeoutError):
                pass
        self._pool.shutdown(wait=False)

    # -- the feed ----------------------------------------------------------
    def _follow(self) -> None:
        """Feed thread: long-poll the hub, apply on the loop, repeat."""
        backoff = Backoff(0.1, 2.0)
        failing = False
        while not self._closing.is_set():
            try:
                seq, changes, snapshot = self._hub.changes(self._sub, self.view.seq)
                backoff.reset()
                failing = False
            except _UNAVAILABLE_ERRORS as exc:
                if self._closing.is_set():
                    return
                # Said once, at INFO: the supervisor watches the Manager and
                # logs the one WARNING that matters (and replaces this worker);
                # a line per retry from every worker would bury it.
                if not failing:
                    log.info("presence feed interrupted: %r (retrying)", exc)
                else:
                    log.debug("presence feed still interrupted: %r", exc)
                failing = True
                self._closing.wait(backoff.next())
                continue
            if snapshot is None and not changes:
                continue
            done = threading.Event()

            def apply(seq=seq, changes=changes, snapshot=snapshot, done=done):
                try:
                    if snapshot is not None:
                        self._apply_snapshot(seq, snapshot)
                    else:
                        self._apply_changes(changes)
                finally:
                    done.set()

            try:
                self._loop.call_soon_threadsafe(apply)
            except RuntimeError:  # loop closed
                return
            while not done.wait(0.5):
                if self._closing.is_set():
                    return

    def _apply_snapshot(self, seq: int, regs: Sequence[RegTuple]) -> None:
        self.view.reset([Registration(*r) for r in regs])
        self.view.seq = seq
        self._wake()

    def _apply_changes(self, changes: Sequence[tuple]) -> None:
        view = self.view
        for seq, op, data in changes:
            if seq <= view.seq:
                continue
            if op == "bind":
                view.put(Registration(*data))
            else:
                view.discard(data[0])
            view.seq = seq
        self._wake()

    def _wake(self) -> None:
        if not self._waiters:
            return
        keep = []
        for seq, fut in self._waiters:
            if seq <= self.view.seq:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((seq, fut))
        self._waiters = keep

    async def _applied(self, seq: int) -> None:
        """Until this worker's own view includes change ``seq`` (bounded)."""
        if not self.subscribe or self.view.seq >= seq:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, fut))
        try:
            await asyncio.wait_for(fut, ACK_WAIT + POLL_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("presence view lagging (at %d, waiting for %d)", self.view.seq, seq)

    # -- Registry ----------------------------------------------------------
    async def bind(self, registration: Registration) -> None:
        seq = await self._call(self._hub.bind, tuple(registration))
        await self._applied(seq)

    async def remove(self, name: str, expected: Optional[Registration] = None) -> bool:
        removed, seq = await self._call(
            self._hub.remove, name, tuple(expected) if expected is not None else None)
        if removed:
            await self._applied(seq)
        return removed

    def query(self, name: Optional[str] = None,
              limit: Optional[int] = None) -> Sequence[Registration]:
        return self.view.query(name, limit)

    async def snapshot(self) -> List[Registration]:
        return [Registration(*r) for r in await self._call(self._hub.snapshot)]

    async def drop_pid(self, pid: int) -> None:
        await self._call(self._hub.drop_pid, pid)
