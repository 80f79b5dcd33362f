"""Where recipients are: the lookup cache, and when each was last seen.

**The lookup cache.**  A directory answer (QUERY) is trusted for
``query_ttl``; after that the name is looked up again before a dial.  When
the directory cannot be reached, the last known address is still worth a
dial (the recipient may well still be there): that is the fallback.  A
connection found dead expires its recipient's entry (look it up afresh:
its address may be what changed) but keeps the address as that fallback.
Fixed addresses (``Peer(addresses=...)``, no directory) always win.

Every name an incoming connection *claims* is looked up too (may we send
over it?), and so is every name a ``/who`` lists, so the sweep drops
entries older than ``keep`` for names nothing is queued for: strangers
claiming random names cannot grow the cache for ever.

**Sightings.**  When each name was last seen online (in a directory answer,
or acknowledging a message), on the wall clock, kept in the store so that
"never seen" survives restarts.  Written at most every ``save_every`` per
name: "seen 3 minutes ago" needs no fsync per lookup.

Sans-IO: explicit times in, answers out; the caller queries the directory
and writes the store.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple

from .settings import CACHE_KEEP, SEEN_SAVE_EVERY

Address = Tuple[str, int]


class Noted(NamedTuple):
    """What a directory answer changed."""

    #: names newly known or at a new address: retry them now
    moved: List[str]
    #: the name asked about, if the answer did not list it (not registered)
    unregistered: Optional[str]


class AddressBook:
    """The lookup cache (``name -> (when looked up, address or None)``)
    behind the fixed ``static`` addresses."""

    __slots__ = ("static", "query_ttl", "keep", "cache")

    def __init__(self, static: Dict[str, Address], query_ttl: float,
                 keep: float = CACHE_KEEP) -> None:
        #: fixed addresses (the caller's own dict: it may change it while running)
        self.static = static
        self.query_ttl = query_ttl
        self.keep = keep
        self.cache: Dict[str, Tuple[float, Optional[Address]]] = {}

    def known(self, name: str, now: float) -> Tuple[bool, Optional[Address]]:
        """``(True, address)`` if a fixed address or a fresh lookup answers
        (the address None: not registered); ``(False, None)``: ask the
        directory."""
        if name in self.static:
            return True, self.static[name]
        cached = self.cache.get(name)
        if cached is not None and now - cached[0] < self.query_ttl:
            return True, cached[1]
        return False, None

    def fallback(self, name: str) -> Optional[Address]:
        """The last address known for ``name``, however old: what to dial
        when the directory cannot be asked."""
        cached = self.cache.get(name)
        return cached[1] if cached is not None else None

    def note(self, regs: Iterable[Tuple[str, Address]], now: float,
             complete_for: Optional[str] = None) -> Noted:
        """A directory answer: ``(name, address)`` of each registration.
        ``complete_for``: the answer lists every registration of that name,
        so its absence means "not registered"."""
        moved = []
        listed = set()
        cache = self.cache
        for name, addr in regs:
            listed.add(name)
            prev = cache.get(name)
            cache[name] = (now, addr)
            if prev is None or prev[1] != addr:
                moved.append(name)
        unregistered = None
        if complete_for is not None and complete_for not in listed:
            cache[complete_for] = (now, None)
            unregistered = complete_for
        return Noted(moved, unregistered)

    def address(self, name: str) -> Optional[Address]:
        """The cached address of ``name`` (None: unknown or not registered)."""
        cached = self.cache.get(name)
        return cached[1] if cached is not None else None

    def forget(self, name: str) -> None:
        """A dial to the cached address failed: look ``name`` up afresh, no fallback."""
        self.cache.pop(name, None)

    def expire(self, name: str) -> None:
        """Look ``name`` up afresh next time, but keep its address as the
        fallback for a directory that is unreachable just then."""
        cached = self.cache.get(name)
        if cached is not None:
            self.cache[name] = (float("-inf"), cached[1])

    def clear(self) -> None:
        """The directory link was (re)established: trust no earlier answer."""
        self.cache.clear()

    def prune(self, now: float, wanted: Callable[[str], bool]) -> int:
        """Drop lookups older than ``keep`` for names not ``wanted`` (a
        recipient with messages waiting keeps its fallback); returns how
        many went."""
        keep = self.keep
        old = [name for name, (at, _) in self.cache.items()
               if now - at > keep and not wanted(name)]
        for name in old:
            del self.cache[name]
        return len(old)


class Sightings:
    """When each name was last seen online (``time.time()``), what of it is
    in the store, and what the next commit writes."""

    __slots__ = ("seen", "saved", "pending", "save_every")

    def __init__(self, loaded: Optional[Dict[str, float]] = None,
                 save_every: float = SEEN_SAVE_EVERY) -> None:
        self.seen: Dict[str, float] = dict(loaded or {})
        self.saved: Dict[str, float] = dict(self.seen)
        self.pending: Dict[str, float] = {}
        self.save_every = save_every

    def saw(self, name: str, now: float) -> bool:
        """``name`` is online at ``now``.  True: a write for the store is
        pending now (the caller schedules a commit)."""
        self.seen[name] = now
        saved = self.saved.get(name)
        if saved is None or now - saved >= self.save_every:
            self.saved[name] = now
            self.pending[name] = now
            return True
        return False

    def last_seen(self, name: str) -> Optional[float]:
        """When ``name`` was last seen (to the millisecond), None if never."""
        at = self.seen.get(name)
        return None if at is None else round(at, 3)

    def take(self) -> Dict[str, float]:
        """The writes pending, for the next commit (which now owns them)."""
        pending, self.pending = self.pending, {}
        return pending

    def not_written(self, batch: Dict[str, float]) -> None:
        """The commit of ``batch`` failed: write it with the next one."""
        for name, at in batch.items():
            self.pending.setdefault(name, at)
            self.saved.pop(name, None)

    def save_all(self) -> None:
        """Pending: every sighting kept only in memory (before the last commit)."""
        for name, at in self.seen.items():
            if self.saved.get(name) != at:
                self.pending[name] = at


__all__ = ["AddressBook", "Sightings", "Noted", "Address"]
