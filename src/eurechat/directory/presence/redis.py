"""Presence in Redis, so directories on several hosts serve one user base.

Layout (``P`` is the key prefix, ``eurechat`` by default, in the URL's DB):

``P:presence``        hash ``name -> "address,port"``: the source of truth.
``P:presence:seq``    counter bumped by every change.
``P:presence:feed``   stream, one entry per change (``o`` = ``b``ind / ``r``emove,
                      ``n`` name, ``v`` value, ``s`` sequence), trimmed to about
                      ``feed_maxlen`` entries.
``P:presence:b:K``    for K in 0..1023: the same entries again, split by
                      ``bucket_of(name)`` (``base.py``): the index through
                      which a sharded liveness checker reads only its own shards
                      (``snapshot_shards``) instead of the whole hash.

Every write is one Lua script (hash update + counter + stream entry, atomic),
so the stream is an exact, gap-checkable change log.  Each directory process
keeps the hash in its read view (``view.ReadView``), fills it once (``HSCAN``) and then
follows the stream with a blocking ``XREAD``: a QUERY is answered from memory,
never with a round trip.  The sequence numbers let a follower notice any gap
(a trimmed stream after a long stall, a Redis that lost data or was flushed);
a gap makes it fall back to reading Redis again (a resync).  After a lost feed
connection it continues from its cursor only when Redis provably still holds
the last change it applied (see ``_resume``), else it resyncs too.  While the
feed is down the view is not trusted: ``query`` raises
:class:`RegistryUnavailable` rather than serving presence of unknown age.

Why a stream rather than pub/sub: pub/sub drops what is published while a
subscriber reconnects, a stream keeps it, and the sequence numbers make the
"did I miss something?" question answerable instead of hopeful.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Collection, Dict, List, Optional, Sequence, Tuple

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from ...backoff import Backoff
from ...tls.fingerprint import PREFIX
from ..redis_client import REDIS_DOWN, redis_client
from .base import BUCKETS, Registration, Registry, RegistryUnavailable, bucket_of
from .view import ReadView

log = logging.getLogger("eurechat.directory.redis")

__all__ = ["RedisRegistry"]

# KEYS: hash, seq, stream, the name's index bucket.
_BIND = """
local seq = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*',
           'o', 'b', 'n', ARGV[1], 'v', ARGV[2], 's', seq)
return seq
"""

# The no-op branches also mend the index entry (a stray or stale one, only
# possible after writes by a version without the index): the checker probes
# index entries, and a removal that finds nothing to remove is its way back.
_REMOVE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then
  redis.call('HDEL', KEYS[4], ARGV[1])
  return 0
end
if ARGV[2] ~= '' and cur ~= ARGV[2] then
  if redis.call('HGET', KEYS[4], ARGV[1]) ~= cur then
    redis.call('HSET', KEYS[4], ARGV[1], cur)
  end
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'o', 'r', 'n', ARGV[1], 's', seq)
return seq
"""

# Make one index entry agree with the hash (KEYS: hash, bucket; ARGV: name).
_MEND = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local idx = redis.call('HGET', KEYS[2], ARGV[1])
if cur then
  if idx ~= cur then
    redis.call('HSET', KEYS[2], ARGV[1], cur)
    return 1
  end
elseif idx then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

# Entries in the hash and in all the index buckets (KEYS: hash, buckets...).
_COUNT = """
local n = 0
for i = 2, #KEYS do n = n + redis.call('HLEN', KEYS[i]) end
return {redis.call('HLEN', KEYS[1]), n}
"""


def _value(reg: Registration) -> str:
    """``address,port``, ``,tls`` for a listener probed over TLS, and
    ``,<fingerprint>`` after it for a user with an enrolled key."""
    if reg.fingerprint:
        return f"{reg.address},{reg.port},{'tls' if reg.tls else ''},{reg.fingerprint}"
    return f"{reg.address},{reg.port},tls" if reg.tls else f"{reg.address},{reg.port}"


def _parse(name: str, value: str) -> Optional[Registration]:
    fp = ""
    head, sep, last = value.rpartition(",")
    if sep and last.startswith(PREFIX):
        fp, value = last, head
        tls = value.endswith(",tls")
        value = value[:-4] if tls else value[:-1]  # ",tls" or the empty ","
    else:
        tls = value.endswith(",tls")
        if tls:
            value = value[:-4]
    address, sep, port = value.rpartition(",")
    # A port out of range (a foreign writer, a hand edit) would make the
    # checker's connect raise OverflowError and fail every round.
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) <= 65535:
        log.warning("ignoring malformed presence entry %r=%r", name, value)
        return None
    return Registration(name, address, int(port), tls, fp)


class RedisRegistry(Registry):
    """Presence in Redis with a local, stream-fed read view (see module doc)."""

    def __init__(self, url: str, *, prefix: str = "eurechat", feed_maxlen: int = 100_000,
                 feed_block_ms: int = 5_000, max_backoff: float = 2.0,
                 follow: bool = True) -> None:
        self.url = url
        # follow=False: a writer/snapshot client without a read view (the
        # supervisor's checker): no memory for the view, no change-log reader.
        self.follow = follow
        self.prefix = prefix
        self._hash = f"{prefix}:presence"
        self._seq_key = f"{prefix}:presence:seq"
        self._stream = f"{prefix}:presence:feed"
        self._buckets = [f"{prefix}:presence:b:{k}" for k in range(BUCKETS)]
        self._maxlen = feed_maxlen
        self._block_ms = feed_block_ms
        self._max_backoff = max_backoff
        self._redis: Optional[Redis] = None
        self._feed_redis: Optional[Redis] = None
        self._bind_script = None
        self._remove_script = None
        self._feed_task: Optional[asyncio.Task] = None
        self._closing = False
        # The read view.
        self.view = ReadView(on_change=self._wake)
        self._seq = 0            # last change applied from Redis
        self._last_id = "0-0"    # stream cursor
        self._live = False       # view known to be current
        # Writes of this process applied locally before the feed echoes them:
        # name -> (seq, registration or None for a removal).
        self._pending: Dict[str, Tuple[int, Optional[Registration]]] = {}
        self._changed: Optional[asyncio.Event] = None  # created on the loop, in start()
        self.resyncs = 0
        self.resumes = 0
        # Removals waiting for the next pipeline (see remove()).
        self._removals: List[Tuple[list, asyncio.Future]] = []
        self._remover: Optional[asyncio.Task] = None
        self.removal_batches = 0

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        self._redis = redis_client(self.url)
        # No silent retry on the feed: a lost feed connection must be seen, since
        # the server behind it may have restarted without the data we hold.
        self._feed_redis = redis_client(self.url, socket_timeout=self._block_ms / 1000 + 5,
                                        retries=0, max_connections=1)
        self._bind_script = self._redis.register_script(_BIND)
        self._remove_script = self._redis.register_script(_REMOVE)
        self._changed = asyncio.Event()
        try:
            if self.follow:
                await self._resync()
            else:
                await self._redis.ping()
            # Removals are sent as bare EVALSHAs in pipelines: have the script
            # in Redis's cache up front rather than learn of it by NOSCRIPT.
            await self._redis.script_load(_REMOVE)
        except REDIS_DOWN as e:
            await self.close()
            raise RegistryUnavailable(f"cannot reach Redis at {self.url}: {e}") from e
        except redis_errors.RedisError as e:
            await self.close()
            raise RegistryUnavailable(f"Redis at {self.url} refused: {e}") from e
        if self.follow:
            self._feed_task = asyncio.get_running_loop().create_task(self._follow())
            log.info("presence in %s: %d registrations", self.url, len(self.view))

    async def close(self) -> None:
        self._closing = True
        self._live = False
        remover, self._remover = self._remover, None
        if remover is not None:
            remover.cancel()  # fails the removals still waiting: "registry closed"
            await asyncio.gather(remover, return_exceptions=True)
        task, self._feed_task = self._feed_task, None
        if task is not None:
            task.cancel()
            # redis-py can swallow a cancellation that lands while a reply is
            # being read, leaving the blocked XREAD to run out its timeout;
            # closing the feed connection ends it at once.
            done, _ = await asyncio.wait({task}, timeout=0.2)
            if not done and self._feed_redis is not None:
                await self._feed_redis.connection_pool.disconnect()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        for client in (self._redis, self._feed_redis):
            if client is not None:
                try:
                    await client.aclose()
                except Exception:  # closing a client of a dead server
                    pass
        self._redis = self._feed_redis = None

    @property
    def applied_seq(self) -> int:
        """Sequence number of the last change applied from Redis's log."""
        return self._seq

    @property
    def version(self) -> int:
        """Bumped on every change of the read view."""
        return self.view.version

    @property
    def live(self) -> bool:
        """Whether the read view is following Redis right now."""
        return self._live

    # -- writes ------------------------------------------------------------
    async def bind(self, registration: Registration) -> None:
        seq = await self._call(self._bind_script, registration.name,
                               [registration.name, _value(registration), self._maxlen])
        self._apply_local(registration.name, int(seq), registration)

    async def remove(self, name: str, expected: Optional[Registration] = None) -> bool:
        """Removals are pipelined: those issued while a batch is on its way
        (a checker round finds thousands of dead peers at once) go out
        together in the next one, up to ``REMOVE_BATCH`` scripts per round
        trip, instead of one round trip (and one pooled connection) each.
        A lone removal still costs one round trip.  Each script is the same
        atomic compare-and-delete, so batching changes no outcome."""
        if self._redis is None:
            raise RegistryUnavailable("registry not started")
        fut = asyncio.get_running_loop().create_future()
        self._removals.append(([name, _value(expected) if expected else "", self._maxlen], fut))
        if self._remover is None:
            self._remover = asyncio.get_running_loop().create_task(self._send_removals())
        seq = await fut
        if not seq:
            return False
        self._apply_local(name, int(seq), None)
        return True

    REMOVE_BATCH = 500

    async def _send_removals(self) -> None:
        batch: List[Tuple[list, asyncio.Future]] = []
        try:
            while self._removals:
                batch = self._removals[:self.REMOVE_BATCH]
                del self._removals[:self.REMOVE_BATCH]
                try:
                    replies = await self._pipeline_removals([args for args, _ in batch])
                except REDIS_DOWN as e:
                    replies = [RegistryUnavailable(f"Redis unreachable: {e}")] * len(batch)
                except redis_errors.RedisError as e:
                    replies = [RegistryUnavailable(f"Redis error: {e}")] * len(batch)
                for (_, fut), reply in zip(batch, replies):
                    if fut.done():
                        continue  # its caller gave up (cancelled)
                    if isinstance(reply, BaseException):
                        if not isinstance(reply, RegistryUnavailable):
                            reply = RegistryUnavailable(f"Redis error: {reply}")
                        fut.set_exception(reply)
                    else:
                        fut.set_result(reply)
                batch = []
        finally:
            # Cancelled (close()) or failed unexpectedly: nobody may wait for ever.
            self._remover = None
            left, self._removals = batch + self._removals, []
            for _, fut in left:
                if not fut.done():
                    fut.set_exception(RegistryUnavailable("registry closed"))

    async def _pipeline_removals(self, batch: List[list]) -> list:
        """One round trip of EVALSHAs (no per-batch SCRIPT EXISTS); a Redis
        that lost its script cache (restart, SCRIPT FLUSH) gets the script
        loaded again and the scripts that did not run are sent once more
        (one that did not run changed nothing, so that is safe)."""
        replies = await self._evalsha_batch(batch)
        todo = [i for i, r in enumerate(replies) if isinstance(r, redis_errors.NoScriptError)]
        if todo:
            assert self._redis is not None
            self._remove_script.sha = await self._redis.script_load(self._remove_script.script)
            again = await self._evalsha_batch([batch[i] for i in todo])
            for i, r in zip(todo, again):
                replies[i] = r
        self.removal_batches += 1
        return replies

    async def _evalsha_batch(self, batch: List[list]) -> list:
        if self._redis is None:
            raise RegistryUnavailable("registry closed")
        keys = (self._hash, self._seq_key, self._stream)
        buckets = self._buckets
        async with self._redis.pipeline(transaction=False) as pipe:
            for args in batch:
                pipe.evalsha(self._remove_script.sha, 4, *keys, buckets[bucket_of(args[0])],
                             *args)
            return await pipe.execute(raise_on_error=False)

    async def _call(self, script, name: str, args: list) -> int:
        if self._redis is None:
            raise RegistryUnavailable("registry not started")
        try:
            return await script(keys=[self._hash, self._seq_key, self._stream,
                                      self._buckets[bucket_of(name)]], args=args)
        except REDIS_DOWN as e:
            raise RegistryUnavailable(f"Redis unreachable: {e}") from e
        except redis_errors.RedisError as e:
            raise RegistryUnavailable(f"Redis error: {e}") from e

    # -- reads -------------------------------------------------------------
    def query(self, name: Optional[str] = None,
              limit: Optional[int] = None) -> Sequence[Registration]:
        if not self._live:
            raise RegistryUnavailable("presence feed from Redis interrupted"
                                      if self.follow else "no read view (follow=False)")
        return self.view.query(name, limit)

    async def snapshot(self) -> List[Registration]:
        if self._redis is None:
            raise RegistryUnavailable("registry not started")
        # HSCAN in chunks, not HGETALL: one O(n) command on a million entries
        # would stall Redis (and every other host) for a second.
        out: List[Registration] = []
        cursor = 0
        try:
            while True:
                cursor, chunk = await self._redis.hscan(self._hash, cursor, count=5000)
                out.extend(r for r in (_parse(n, v) for n, v in chunk.items())
                           if r is not None)
                if not cursor:
                    break
        except REDIS_DOWN as e:
            raise RegistryUnavailable(f"Redis unreachable: {e}") from e
        except redis_errors.RedisError as e:
            raise RegistryUnavailable(f"Redis error: {e}") from e
        # HSCAN may return an entry twice (rehashing): keep one per name.
        unique = {r.name: r for r in out}
        return sorted(unique.values(), key=lambda r: r.name)

    #: Index buckets read per pipeline by ``snapshot_shards``.
    BUCKETS_PER_TRIP = 64

    async def snapshot_shards(self, shards: Collection[int], count: int) -> List[Registration]:
        """The registrations of ``shards`` out of ``count`` (a name's shard is
        ``bucket_of(name) % count``), read from the index: one ``HGETALL`` per
        bucket, ``BUCKETS_PER_TRIP`` buckets per round trip -- Redis work in
        proportion to the shards asked for, not to the whole hash.  First an
        O(buckets) count check: an index that does not add up (entries
        written by a version without it) is mended from the hash first
        (``reindex``), so no registration escapes the checker for good."""
        if self._redis is None:
            raise RegistryUnavailable("registry not started")
        wanted = [k for k in range(BUCKETS) if k % count in shards]
        try:
            total, indexed = await self._redis.eval(_COUNT, 1 + BUCKETS, self._hash,
                                                    *self._buckets)
            if int(total) != int(indexed):
                log.warning("presence index incomplete (%s registrations, %s indexed): "
                            "mending it from the hash", total, indexed)
                await self.reindex()
            out: List[Registration] = []
            for start in range(0, len(wanted), self.BUCKETS_PER_TRIP):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for k in wanted[start:start + self.BUCKETS_PER_TRIP]:
                        pipe.hgetall(self._buckets[k])
                    for chunk in await pipe.execute():
                        out.extend(r for r in (_parse(n, v) for n, v in chunk.items())
                                   if r is not None)
        except REDIS_DOWN as e:
            raise RegistryUnavailable(f"Redis unreachable: {e}") from e
        except redis_errors.RedisError as e:
            raise RegistryUnavailable(f"Redis error: {e}") from e
        return out

    async def reindex(self) -> int:
        """Make the index agree with the hash, entry by entry, each fix an atomic
        compare against the hash (so concurrent writes are never undone):
        every name of the hash, then every name of the index.  O(registrations);
        needed only after writes by a version without the index.  Returns the
        number of entries fixed."""
        assert self._redis is not None
        mend = self._redis.register_script(_MEND)
        fixed = 0

        async def run(names: Sequence[str]) -> int:
            async with self._redis.pipeline(transaction=False) as pipe:
                for n in names:
                    await mend(keys=[self._hash, self._buckets[bucket_of(n)]], args=[n],
                               client=pipe)
                return sum(int(x) for x in await pipe.execute())

        cursor = 0
        while True:
            cursor, chunk = await self._redis.hscan(self._hash, cursor, count=5000)
            fixed += await run(list(chunk))
            if not cursor:
                break
        for key in self._buckets:
            cursor = 0
            while True:
                cursor, chunk = await self._redis.hscan(key, cursor, count=5000)
                fixed += await run(list(chunk))
                if not cursor:
                    break
        log.info("presence index mended: %d entries fixed", fixed)
        return fixed

    async def wait_changed(self, timeout: Optional[float] = None) -> bool:
        """Wait until the read view changes or goes live/stale (or ``timeout``);
        for tests and tools that must wait on the event instead of sleeping."""
        assert self._changed is not None
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # -- the read view -------------------------------------------------------
    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _set(self, name: str, reg: Optional[Registration]) -> None:
        if reg is None:
            self.view.discard(name)
        else:
            self.view.put(reg)

    def _apply_local(self, name: str, seq: int, reg: Optional[Registration]) -> None:
        """Read your own writes: the session that BINDs sees it in its next
        QUERY, even before the feed echoes it back."""
        if seq <= self._seq or not self.follow:
            return  # the feed already delivered this change (or a later one)
        self._pending[name] = (seq, reg)
        self._set(name, reg)

    def _apply_feed(self, seq: int, op: str, name: str, value: Optional[str]) -> None:
        self._seq = seq
        pending = self._pending.get(name)
        if pending is not None:
            if pending[0] > seq:
                return  # our own newer write is already in the view
            del self._pending[name]
        if op == "b" and value is not None:
            reg = _parse(name, value)
            if reg is not None:
                self._set(name, reg)
        elif op == "r":
            self._set(name, None)

    async def _resync(self) -> None:
        """Rebuild the view from Redis without blocking it: remember where the
        change log stands, scan the hash, then let the feed replay everything
        after that point (replaying a change the scan already saw is harmless)."""
        assert self._redis is not None
        self._live = False
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(self._seq_key)
            pipe.xrevrange(self._stream, count=1)
            seq_raw, last = await pipe.execute()
        seq = int(seq_raw or 0)
        last_id = last[0][0] if last else "0-0"
        fresh: Dict[str, Registration] = {}
        cursor = 0
        while True:
            cursor, chunk = await self._redis.hscan(self._hash, cursor, count=5000)
            for n, v in chunk.items():
                reg = _parse(n, v)
                if reg is not None:
                    fresh[n] = reg
            if not cursor:
                break
        # Own writes not yet echoed are NOT carried over: after a Redis that
        # lost data they would resurrect what Redis no longer has.  A write
        # that raced with this rebuild is in the scan or after the cursor, so
        # the feed brings it back within milliseconds.
        self._pending.clear()
        self._seq = seq
        self._last_id = last_id
        self.resyncs += 1
        self._live = True
        self.view.reset(list(fresh.values()))  # wakes waiters (live, changed)

    async def _resume(self) -> bool:
        """After a lost feed connection: can the view simply continue from its
        cursor?  Yes when the last change it applied is still in Redis's log
        under the same sequence number: the log is append-only and written in
        the same script as the hash, so Redis then holds everything the view
        holds, and every later change follows the cursor.  No after a restart
        that lost data, a restore from an older file, a flush, or a log trimmed
        past the cursor: then the view is rebuilt (O(n), while a resume is
        O(1) -- which matters when hundreds of processes reconnect at once)."""
        assert self._redis is not None
        if self._last_id == "0-0":
            return False
        entries = await self._redis.xrange(self._stream, min=self._last_id,
                                           max=self._last_id, count=1)
        if not entries or int(entries[0][1].get("s", -1)) != self._seq:
            return False
        self._live = True
        self.resumes += 1
        if self._changed is not None:
            self._changed.set()
        return True

    async def _follow(self) -> None:
        """Follow the change log forever; on trouble, back off, then resume from
        the cursor when that is provably safe, else resync."""
        backoff = Backoff(min(0.05, self._max_backoff), self._max_backoff)
        need_resync = False
        reconnect = False
        down_since_logged = False
        while not self._closing:
            try:
                if reconnect:
                    need_resync = need_resync or not await self._resume()
                    reconnect = False
                if need_resync:
                    await self._resync()
                    need_resync = False
                if down_since_logged:
                    log.warning("presence feed from Redis restored (%d registrations)",
                                len(self.view))
                    down_since_logged = False
                assert self._feed_redis is not None
                reply = await self._feed_redis.xread({self._stream: self._last_id},
                                                     count=1000, block=self._block_ms)
                backoff.reset()
                for _stream, entries in reply or ():
                    for entry_id, fields in entries:
                        seq = int(fields.get("s", 0))
                        if seq != self._seq + 1:
                            log.warning("presence feed gap (have %d, got %d): resync",
                                        self._seq, seq)
                            need_resync = True
                            break
                        self._last_id = entry_id
                        self._apply_feed(seq, fields.get("o", ""), fields.get("n", ""),
                                         fields.get("v"))
                    if need_resync:
                        break
            except asyncio.CancelledError:
                raise
            except (redis_errors.RedisError, OSError) as e:
                if self._closing:
                    return
                if self._live:
                    self._live = False
                    if self._changed is not None:
                        self._changed.set()
                reconnect = True
                if not down_since_logged:
                    log.warning("presence feed from Redis interrupted (%s); "
                                "QUERY answers 'directory unavailable' until it is back", e)
                    down_since_logged = True
                await asyncio.sleep(backoff.next())
