#!/usr/bin/env python3
"""Benchmark of the distributed backends (not a test): the Redis registry beside
the Manager registry under the same load in the same run, plus the
per-operation costs that docs/scaling.md projects from.

    .venv/bin/python bench/bench_scaling.py [--secs 3] [--regs 1000] [--big 100000]
                                         [--probes 10000] [--quick]

Pinning (2 cores): every server-side process (directory worker, its Manager
hub, redis-server) on CPU 0; the load generator and the PONG peers on CPU 1.
The directory runs ``--workers 1`` so one core's worth of QUERY/BIND is
measured for each registry.

1. QUERY throughput: ``../shared/bench/loadgen.c`` (gcc into a temp dir),
   200 logged-in sessions sending ``QUERY 0 bob`` at depth 1 and 16; then 50
   sessions sending ``QUERY 0`` on ``--regs`` registrations (the full list).
2. BIND latency: 20 sessions re-BINDing at depth 1 (each BIND is verified by a
   TCP connect to a live peer, then written to the registry); p50/p99 from
   loadgen, and Redis's own cost per write (INFO commandstats).
3. Redis per-operation costs (in process): BIND propagation to another
   instance's read view (p50/p99), memory per registration in Redis and in a
   read view, full resync (HSCAN) time for ``--big`` registrations.
4. Accounts: argon2id verify at the production cost (19 MiB, t=2) and PostgreSQL
   lookups (throwaway cluster, as in the tests).
5. Liveness checker over ``--probes`` registrations held in Redis.
6. Sharded checkers (``--checker-shards``): ``--shard-regs`` registrations
   pointing at a closed loopback port, checked (and so removed) by 1, then 2
   checker processes sharing 16 shard leases (each its own event loop, as
   on two hosts; not pinned: with 2 cores, one per core); throughput =
   registrations checked per second of wall time, median of ``--reps``
   alternating runs.  Plus, per instance and round,
   a round's read of its registrations at ``--scan-regs``: the sorted HSCAN
   of the whole hash (``--checker-shards 1``) vs all, then half, of the shards
   from the index buckets.
   ``--checker-only`` runs just this section.

Results: a human table and one JSON line (``BENCH_SCALING {...}``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # tests/support/servers.py: real servers

from benchlib import (  # noqa: E402  (bench/ is this script's folder)
    Directory,
    build_loadgen,
    raise_nofile,
    start_pong_server,
)
from benchlib import loadgen as _loadgen  # noqa: E402

from support.servers import PostgresCluster, RedisServer  # noqa: E402

PW = "bench-password"


def pin(pid: int, cpu: int) -> None:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)],
                       capture_output=True, check=False)


def pct(values, q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def request(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    reply = sock.recv(65536)
    if not reply.startswith((b"ACK", b"RESULT")):
        raise SystemExit(f"{data!r} -> {reply!r}")
    return reply


def populate(port: int, names, target_port: int) -> None:
    """REGISTER, log in and BIND each name through the real protocol."""
    for name in names:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            n = name.encode()
            request(s, b"REGISTER 0 %s %s\n" % (n, PW.encode()))
            request(s, b"USER 0 %s\n" % n)
            request(s, b"PASS 0 %s\n" % PW.encode())
            request(s, b"BIND 0 127.0.0.1 %d\n" % target_port)


def loadgen(binary: str, port: int, *args: str) -> list:
    """Load from CPU 1 (the servers are on CPU 0)."""
    return _loadgen(binary, port, *args, cpu=1)


def redis_stats(url: str) -> dict:
    import redis
    with redis.Redis.from_url(url) as r:
        return r.info("commandstats")


# -- 1 + 2: the directory under load, Manager vs Redis ---------------------------
def directory_phase(binary: str, spec: str, regs: int, secs: str, pong_port: int,
                    redis_url: str) -> dict:
    import redis
    with redis.Redis.from_url(redis_url) as r:
        r.flushall()
        r.config_resetstat()
    data_dir = tempfile.mkdtemp(prefix="bench-scaling-")
    d = Directory(data_dir, "--registry", spec, "--workers", "1", "--bind-policy", "any",
                  "--max-connections", "12000", cpu=0)
    try:
        names = ["bob"] + [f"user{i:05d}" for i in range(regs - 1)]
        populate(d.port, names, pong_port)
        out = {}
        one = loadgen(binary, d.port, "-c", "200", "-d", "1,16", "-t", secs, "-w", "1",
                      "-q", r"QUERY 0 bob\n", "-L", f"bob:{PW}")
        out["query_one_d1"], out["query_one_d16"] = one[0], one[1]
        out["query_all"] = loadgen(binary, d.port, "-c", "50", "-d", "1", "-t", secs,
                                   "-w", "1", "-q", r"QUERY 0\n", "-L", f"bob:{PW}")[0]
        with redis.Redis.from_url(redis_url) as r:
            r.config_resetstat()
        out["bind"] = loadgen(binary, d.port, "-c", "20", "-d", "1", "-t", secs, "-w", "1",
                              "-q", rf"BIND 0 127.0.0.1 {pong_port}\n", "-L", f"bob:{PW}")[0]
        if spec.startswith("redis://"):
            stats = redis_stats(redis_url)
            out["redis_evalsha"] = stats.get("cmdstat_evalsha", {})
            out["redis_xread"] = stats.get("cmdstat_xread", {})
        return out
    finally:
        d.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


# -- 3: Redis per-operation costs ---------------------------------------------------
async def redis_costs(url: str, big: int) -> dict:
    import redis.asyncio as aredis

    from eurechat.directory.interfaces import Registration
    from eurechat.directory.presence.base import bucket_of
    from eurechat.directory.presence.redis import _BIND, RedisRegistry

    admin = aredis.Redis.from_url(url)
    await admin.flushall()
    a, b = RedisRegistry(url), RedisRegistry(url)
    await a.start()
    await b.start()
    # Propagation: A writes, B's view shows it (B follows the stream).
    writes, seen = [], []
    for i in range(2000):
        reg = Registration(f"prop{i:05d}", "127.0.0.1", 2000 + i % 60000)
        t0 = time.perf_counter()
        await a.bind(reg)
        t1 = time.perf_counter()
        while not b.query(reg.name):
            await b.wait_changed(5)
        t2 = time.perf_counter()
        writes.append(t1 - t0)
        seen.append(t2 - t0)
    await a.close()
    await b.close()

    # Memory per registration in Redis (hash + change log entries), bulk-loaded
    # through the same script, pipelined.
    await admin.flushall()
    before = (await admin.info("memory"))["used_memory"]
    script = admin.register_script(_BIND)
    t0 = time.perf_counter()
    chunk = 2000
    for start in range(0, big, chunk):
        pipe = admin.pipeline(transaction=False)
        for i in range(start, min(big, start + chunk)):
            await script(keys=["eurechat:presence", "eurechat:presence:seq",
                               "eurechat:presence:feed",
                               f"eurechat:presence:b:{bucket_of(f'u{i:07d}')}"],
                         args=[f"u{i:07d}", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255},40000",
                               100_000], client=pipe)
        await pipe.execute()
    load_s = time.perf_counter() - t0
    after = (await admin.info("memory"))["used_memory"]
    hash_only = await admin.memory_usage("eurechat:presence", samples=0)
    stream = await admin.memory_usage("eurechat:presence:feed", samples=0)

    # A new instance's full read of Redis (start / resync after an outage).
    tracemalloc.start()
    c = RedisRegistry(url)
    t0 = time.perf_counter()
    await c.start()
    resync_s = time.perf_counter() - t0
    view_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    # QUERY 0 under churn: one change, then one QUERY 0 (the view is copied on
    # write once a listing was handed out), unlimited and with the 10,000 limit.
    t0 = time.perf_counter()
    for i in range(20):
        c._set(f"churn{i}", Registration(f"churn{i}", "127.0.0.1", 5000))
        c.query()
    full_list_ms = (time.perf_counter() - t0) / 20 * 1000
    t0 = time.perf_counter()
    for i in range(20):
        c._set(f"churn{i}", Registration(f"churn{i}", "127.0.0.1", 5001))
        c.query(limit=10_001)
    limited_ms = (time.perf_counter() - t0) / 20 * 1000
    await c.close()
    await admin.flushall()
    await admin.aclose()
    return {
        "bind_call_p50_us": pct(writes, 0.5) * 1e6, "bind_call_p99_us": pct(writes, 0.99) * 1e6,
        "propagation_p50_us": pct(seen, 0.5) * 1e6, "propagation_p99_us": pct(seen, 0.99) * 1e6,
        "bulk_load_per_s": big / load_s,
        "redis_bytes_per_reg": (after - before) / big,
        "redis_hash_bytes_per_reg": (hash_only or 0) / big,
        "redis_stream_bytes_total": stream or 0,
        "resync_s": resync_s, "resync_regs": big,
        "view_bytes_per_reg": view_bytes / big,
        "query_all_rebuild_ms": full_list_ms, "query_limited_rebuild_ms": limited_ms,
    }


async def fanout(url: str, followers: int, writes: int = 3000) -> dict:
    """Redis CPU per BIND when ``followers`` directory processes follow the
    change log (each one a blocking XREAD that every write wakes up)."""
    import redis.asyncio as aredis

    from eurechat.directory.interfaces import Registration
    from eurechat.directory.presence.redis import RedisRegistry

    admin = aredis.Redis.from_url(url, decode_responses=True)
    await admin.flushall()
    regs = [RedisRegistry(url) for _ in range(followers)]
    for r in regs:
        await r.start()
    writer = RedisRegistry(url)
    await writer.start()
    cpu0 = await admin.info("cpu")
    t0 = time.perf_counter()

    async def write(k: int) -> None:
        for i in range(k, writes, 16):
            await writer.bind(Registration(f"f{i:06d}", "127.0.0.1", 3000))
    await asyncio.gather(*(write(k) for k in range(16)))
    last = f"f{writes - 1:06d}"
    for r in regs:  # every follower has the last write
        while not r.query(last):
            await r.wait_changed(5)
    took = time.perf_counter() - t0
    cpu1 = await admin.info("cpu")
    used = (cpu1["used_cpu_user"] + cpu1["used_cpu_sys"]
            - cpu0["used_cpu_user"] - cpu0["used_cpu_sys"])
    xread = (await admin.info("commandstats")).get("cmdstat_xread", {})
    for r in regs + [writer]:
        await r.close()
    await admin.aclose()
    return {"followers": followers, "binds_per_s": writes / took,
            "redis_cpu_us_per_bind": used / writes * 1e6,
            "xread_calls_per_bind": xread.get("calls", 0) / writes}


# -- 4: accounts --------------------------------------------------------------------
def password_cost() -> float:
    from eurechat.directory.accounts.hashing import check_password, hash_password
    os.environ.pop("EURECHAT_ARGON2_MEMORY_KIB", None)  # the production cost
    record = hash_password(b"some password")
    t0 = time.perf_counter()
    for _ in range(10):
        check_password(b"some password", record)
    return (time.perf_counter() - t0) / 10


async def pg_costs(dsn: str) -> dict:
    os.environ["EURECHAT_ARGON2_MEMORY_KIB"] = "8"  # isolate the database from the hash
    from eurechat.directory.accounts.postgres import PostgresAccounts
    store = PostgresAccounts(dsn, pool_size=8)
    await store.start()
    await store.create("pgbench", b"pgbench-password")
    lat = []
    for _ in range(2000):
        t0 = time.perf_counter()
        await store._run("SELECT hash FROM eurechat_accounts WHERE name = %s", ("pgbench",),
                         "one")
        lat.append(time.perf_counter() - t0)

    async def worker(n):
        for _ in range(n):
            await store._run("SELECT hash FROM eurechat_accounts WHERE name = %s",
                             ("pgbench",), "one")
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(500) for _ in range(8)))
    conc = 4000 / (time.perf_counter() - t0)
    await store.close()
    return {"pg_lookup_p50_us": pct(lat, 0.5) * 1e6, "pg_lookup_p99_us": pct(lat, 0.99) * 1e6,
            "pg_lookups_per_s_8conns": conc}


# -- 5: the checker -------------------------------------------------------------------
async def checker_round(url: str, n: int, port: int) -> dict:
    import redis.asyncio as aredis

    from eurechat.directory.checker import LivenessChecker
    from eurechat.directory.interfaces import Registration
    from eurechat.directory.presence.redis import RedisRegistry
    admin = aredis.Redis.from_url(url)
    await admin.flushall()
    await admin.aclose()
    reg = RedisRegistry(url, follow=False)  # as in the supervisor
    await reg.start()
    await asyncio.gather(*(reg.bind(Registration(f"peer{i:05d}", "127.0.0.1", port))
                           for i in range(n)))
    checker = LivenessChecker(reg, interval=3600, probe_timeout=5.0, concurrency=1000)
    import resource
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    probed, removed = await checker.check_round()
    took = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    await reg.close()
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    return {"probed": probed, "removed": len(removed), "round_s": took,
            "probes_per_s": probed / took, "cpu_us_per_probe": cpu / max(1, probed) * 1e6}


# -- 6: sharded checkers ---------------------------------------------------------------
SHARD_CHILD = r"""
import asyncio, json, resource, sys, time
from eurechat.directory.app import install_uvloop
from eurechat.directory.checker import LivenessChecker
from eurechat.directory.election.lease import ShardedLease, fair_share
from eurechat.directory.presence.redis import RedisRegistry

async def main(url, shards, instances):
    reg = RedisRegistry(url, follow=False)      # as in a supervisor
    await reg.start()
    election = ShardedLease(url, shards=shards, lease=10.0)
    await election.start()
    want = fair_share(shards, instances)
    ok = await election.wait_for(
        lambda h: election.instances == instances and len(h) == want, 60)
    assert ok, (election.instances, sorted(election.held()))
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    checker = LivenessChecker(reg, election, interval=3600, probe_timeout=5.0,
                              concurrency=1000)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    probed, removed = await checker.check_round()
    took = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"probed": probed, "removed": len(removed), "secs": took,
                      "cpu": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime,
                      "shards": sorted(election.held()),
                      "removal_batches": reg.removal_batches}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)   # keep the shards until told
    await election.close()
    await reg.close()

install_uvloop()
asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def seed_presence(url: str, n: int, port: int, prefix: str = "peer") -> None:
    """``n`` registrations written straight into the presence hash and its index
    buckets (pipelined HSET; the checker reads nothing else)."""
    import redis

    from eurechat.directory.presence.base import bucket_of
    with redis.Redis.from_url(url) as r:
        for start in range(0, n, 10_000):
            with r.pipeline(transaction=False) as pipe:
                for i in range(start, min(n, start + 10_000)):
                    name, value = f"{prefix}{i:07d}", f"127.0.0.1,{port}"
                    pipe.hset("eurechat:presence", name, value)
                    pipe.hset(f"eurechat:presence:b:{bucket_of(name)}", name, value)
                pipe.execute()


def sharded_round(url: str, instances: int, n: int, shards: int, port: int) -> dict:
    """One checker round over ``n`` dead registrations split between
    ``instances`` checker processes; wall time from 'go' to the last result."""
    import redis
    with redis.Redis.from_url(url) as r:
        r.flushall()
    seed_presence(url, n, port)
    with redis.Redis.from_url(url) as r:
        r.config_resetstat()
    kids = [subprocess.Popen([sys.executable, "-c", SHARD_CHILD, url, str(shards),
                              str(instances)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, preexec_fn=raise_nofile) for _ in range(instances)]
    try:
        for k in kids:
            line = k.stdout.readline()
            if line.strip() != "ready":
                raise SystemExit(f"checker child did not get its shards: {line!r}")
        t0 = time.perf_counter()
        for k in kids:
            k.stdin.write("go\n")
            k.stdin.flush()
        results = [json.loads(k.stdout.readline()) for k in kids]
        wall = time.perf_counter() - t0
        for k in kids:
            k.stdin.write("exit\n")
            k.stdin.flush()
        for k in kids:
            try:
                k.wait(30)
            except subprocess.TimeoutExpired:
                print("warning: a checker child did not exit within 30 s (killed)", flush=True)
    finally:
        for k in kids:
            if k.poll() is None:
                k.kill()
                k.wait()
    with redis.Redis.from_url(url) as r:
        left = r.hlen("eurechat:presence")
        stats = r.info("commandstats")
    probed = sum(x["probed"] for x in results)
    if probed != n or left != 0 or sum(x["removed"] for x in results) != n:
        raise SystemExit(f"checker round incomplete: probed {probed}, left {left}: {results}")
    all_shards = sorted(s for x in results for s in x["shards"])
    if all_shards != list(range(shards)):
        raise SystemExit(f"shards not split exactly: {results}")
    return {"instances": instances, "regs": n, "wall_s": wall, "per_s": n / wall,
            "per_instance": [{"probed": x["probed"], "secs": x["secs"], "cpu_s": x["cpu"],
                              "shards": len(x["shards"]),
                              "removal_batches": x["removal_batches"]} for x in results],
            "redis_hscan": stats.get("cmdstat_hscan", {}),
            "redis_evalsha": stats.get("cmdstat_evalsha", {})}


async def scan_cost(url: str, n: int, shards: int) -> dict:
    """What a round reads before probing, at ``n`` registrations: a lone
    instance (all shards) HSCANs the whole hash; an instance holding half of
    the shards reads only their index buckets (``snapshot_shards``)."""
    import redis

    from eurechat.directory.presence.redis import RedisRegistry
    with redis.Redis.from_url(url) as r:
        r.flushall()
    seed_presence(url, n, 9)
    reg = RedisRegistry(url, follow=False)
    await reg.start()
    out: dict = {"regs": n}
    for label, read in (("hscan", reg.snapshot),
                        ("all", lambda: reg.snapshot_shards(set(range(shards)), shards)),
                        ("half", lambda: reg.snapshot_shards(set(range(shards // 2)), shards))):
        with redis.Redis.from_url(url) as r:
            r.config_resetstat()
        t0 = time.perf_counter()
        got = len(await read())   # dropped at once: a live million-entry list
        took = time.perf_counter() - t0  # would slow the next read's GC passes
        with redis.Redis.from_url(url) as r:
            stats = r.info("commandstats")
        redis_us = sum(v.get("usec", 0) for k, v in stats.items()
                       if k in ("cmdstat_hscan", "cmdstat_hgetall", "cmdstat_eval"))
        out[label] = {"read": got, "secs": took, "redis_usec": redis_us,
                      "calls": {k[8:]: v["calls"] for k, v in stats.items()
                                if k in ("cmdstat_hscan", "cmdstat_hgetall", "cmdstat_eval")}}
    await reg.close()
    with redis.Redis.from_url(url) as r:
        r.flushall()
    return out


def checker_shards_section(url: str, opts) -> dict:
    # Bound but never listening, and held for the whole section: every probe
    # is refused (every entry removed), and no other program on the machine
    # can bind the port meanwhile and answer our PINGs (a released port can
    # be handed out again at once, e.g. to a test's directory on port 0).
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    closed = dead.getsockname()[1]
    runs: dict = {1: [], 2: []}
    try:
        for rep in range(opts.reps):
            for instances in (1, 2):
                print(f"== sharded checker, {instances} instance(s), run {rep + 1}/{opts.reps}",
                      flush=True)
                runs[instances].append(sharded_round(url, instances, opts.shard_regs, 16,
                                                     closed))
    finally:
        dead.close()
    out = {}
    for instances, lst in runs.items():
        lst.sort(key=lambda x: x["per_s"])
        out[str(instances)] = dict(lst[len(lst) // 2], all_per_s=[x["per_s"] for x in lst])
    print("== a round's read: whole hash vs index buckets", flush=True)
    out["scan"] = asyncio.run(scan_cost(url, opts.scan_regs, 16))
    return out


def report_checker_shards(k: dict) -> None:
    one, two = k["1"], k["2"]
    for x in (one, two):
        each = ", ".join(f"{p['probed']} in {p['secs']:.2f} s ({p['cpu_s']:.2f} CPU-s, "
                         f"{p['shards']} shards, {p['removal_batches']} removal pipelines)"
                         for p in x["per_instance"])
        ev = x["redis_evalsha"]
        print(f"sharded checker, {x['instances']} instance(s): {x['regs']} dead registrations "
              f"checked in {x['wall_s']:.2f} s = {x['per_s']:.0f}/s "
              f"(runs: {', '.join(f'{v:.0f}' for v in x['all_per_s'])}/s); each: {each}; "
              f"Redis EVALSHA {ev.get('calls', 0)} calls, {ev.get('usec_per_call', 0):.1f} us "
              f"per call")
    cpu1 = sum(p["cpu_s"] for p in one["per_instance"]) / one["regs"]
    cpu2 = [p["cpu_s"] / max(1, p["probed"]) for p in two["per_instance"]]
    print(f"speed-up 2 vs 1 instance (wall): {two['per_s'] / one['per_s']:.2f}x; checker CPU per "
          f"registration: 1 instance {cpu1 * 1e6:.0f} us, 2 instances "
          f"{' / '.join(f'{c * 1e6:.0f}' for c in cpu2)} us; with a free core per instance "
          f"(CPU-bound): 1 instance {1 / cpu1:.0f}/s, 2 instances "
          f"{two['regs'] / max(p['cpu_s'] for p in two['per_instance']):.0f}/s")
    s = k["scan"]
    for label, what in (("hscan", "one lease (--checker-shards 1): sorted HSCAN of the hash"),
                        ("all", "all 16 shards (a lone instance), index buckets"),
                        ("half", "8 of 16 shards, index buckets")):
        x = s[label]
        print(f"round's read at {s['regs']} registrations, {what}: {x['read']} read in "
              f"{x['secs']:.2f} s ({x['secs'] / max(1, x['read']) * 1e6:.1f} us each), "
              f"Redis busy {x['redis_usec'] / 1000:.0f} ms "
              f"({x['redis_usec'] / max(1, x['read']):.2f} us each; calls {x['calls']})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--secs", default="3", help="measured seconds per loadgen phase")
    ap.add_argument("--regs", type=int, default=1000, help="registrations for QUERY 0")
    ap.add_argument("--big", type=int, default=100_000,
                    help="registrations for memory and resync costs")
    ap.add_argument("--probes", type=int, default=10_000, help="registrations for the checker")
    ap.add_argument("--reps", type=int, default=3,
                    help="alternating runs of each registry (the median is reported)")
    ap.add_argument("--followers", type=lambda t: [int(x) for x in t.split(",")],
                    default=[1, 8, 32, 96], help="follower counts for the fan-out phase")
    ap.add_argument("--appendfsync", default="everysec", choices=("everysec", "always"),
                    help="redis-server durability (always: fsync every write)")
    ap.add_argument("--shard-regs", type=int, default=10_000,
                    help="dead registrations for the sharded-checker section")
    ap.add_argument("--scan-regs", type=int, default=200_000,
                    help="registrations for the whole-hash HSCAN cost")
    ap.add_argument("--checker-only", action="store_true",
                    help="run only the sharded-checker section (6)")
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 s phases")
    opts = ap.parse_args()
    if opts.quick:
        opts.secs, opts.regs, opts.big, opts.probes = "1", 200, 20_000, 2000
        opts.followers = [1, 8]
        opts.reps = 1
        opts.shard_regs, opts.scan_regs = 2000, 20_000
    raise_nofile()
    if opts.checker_only:
        server = RedisServer(appendfsync=opts.appendfsync).start()
        try:
            shards = {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
                      "checker_shards": checker_shards_section(server.url, opts)}
        finally:
            server.close()
        print()
        report_checker_shards(shards["checker_shards"])
        shards["loadavg_end"] = os.getloadavg()
        print(f"load average (1/5/15 min) at start {shards['loadavg_start']}, "
              f"at end {shards['loadavg_end']}")
        print("BENCH_SCALING " + json.dumps(shards, default=str))
        return 0
    results: dict = {"cpus": os.cpu_count(), "appendfsync": opts.appendfsync,
                     "loadavg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        binary = build_loadgen(tmp)
        pong_port = socket.socket()
        pong_port.bind(("127.0.0.1", 0))
        port = pong_port.getsockname()[1]
        pong_port.close()
        pong = start_pong_server(port, cpu=1)
        # Redis's default durability for an append-only file: fsync once a second.
        server = RedisServer(appendfsync=opts.appendfsync).start()
        pin(server._proc.proc.pid, 0)
        try:
            # Alternate the two registries, ``--reps`` times, and keep each one's
            # median phase: a shared 2-core machine is noisy.
            runs: dict = {"manager": [], "redis": []}
            for rep in range(opts.reps):
                for name, spec in (("manager", "manager"), ("redis", server.url)):
                    print(f"== directory, --registry {name} (run {rep + 1}/{opts.reps})",
                          flush=True)
                    runs[name].append(directory_phase(binary, spec, opts.regs, opts.secs,
                                                      port, server.url))
            for name, lst in runs.items():
                results[name] = {
                    key: sorted((r[key] for r in lst),
                                key=lambda x: x.get("req_per_s", 0) if isinstance(x, dict)
                                else 0)[len(lst) // 2]
                    for key in lst[0]}
                results[name]["all_req_per_s"] = {
                    key: [r[key]["req_per_s"] for r in lst] for key in lst[0]
                    if isinstance(lst[0][key], dict) and "req_per_s" in lst[0][key]}
            print("== Redis per-operation costs", flush=True)
            results["redis_costs"] = asyncio.run(redis_costs(server.url, opts.big))
            print("== change-log fan-out", flush=True)
            results["fanout"] = [asyncio.run(fanout(server.url, f)) for f in opts.followers]
            print("== checker round", flush=True)
            results["checker"] = asyncio.run(checker_round(server.url, opts.probes, port))
            results["checker_shards"] = checker_shards_section(server.url, opts)
        finally:
            server.close()
            pong.kill()
            pong.wait()
    print("== accounts", flush=True)
    results["argon2id_verify_ms"] = password_cost() * 1000
    with PostgresCluster() as pg:
        results["postgres"] = asyncio.run(pg_costs(pg.create_database()))

    # -- report ---------------------------------------------------------------------
    def row(label, m, r):
        def f(x, k):
            return x[k] if k in x else float("nan")
        print(f"{label:<34}{f(m, 'req_per_s'):>12.0f}{f(r, 'req_per_s'):>12.0f}"
              f"{f(r, 'req_per_s') / max(f(m, 'req_per_s'), 1):>8.2f}x"
              f"   p50 {f(m, 'p50_us'):.0f}/{f(r, 'p50_us'):.0f} us"
              f"   p99 {f(m, 'p99_us'):.0f}/{f(r, 'p99_us'):.0f} us")

    m, r = results["manager"], results["redis"]
    print()
    print(f"{'per second, one worker on one core':<34}{'manager':>12}{'redis':>12}"
          f"{'ratio':>9}   latency manager/redis")
    row("QUERY 0 bob, 200 conns, depth 1", m["query_one_d1"], r["query_one_d1"])
    row("QUERY 0 bob, 200 conns, depth 16", m["query_one_d16"], r["query_one_d16"])
    row(f"QUERY 0 ({opts.regs} regs), 50 conns", m["query_all"], r["query_all"])
    row("BIND (verified), 20 conns", m["bind"], r["bind"])
    print(f"(each of {opts.reps} runs, req/s: manager {m['all_req_per_s']}, "
          f"redis {r['all_req_per_s']})")
    ev = r.get("redis_evalsha", {})
    if ev:
        print(f"Redis CPU per BIND write (EVALSHA): {ev.get('usec_per_call', 0):.1f} us "
              f"({ev.get('calls', 0)} calls)")
    c = results["redis_costs"]
    print(f"RedisRegistry.bind() call: p50 {c['bind_call_p50_us']:.0f} us, "
          f"p99 {c['bind_call_p99_us']:.0f} us")
    print(f"BIND visible in another instance's view: p50 {c['propagation_p50_us']:.0f} us, "
          f"p99 {c['propagation_p99_us']:.0f} us")
    print(f"Redis memory per registration: {c['redis_bytes_per_reg']:.0f} B (hash alone "
          f"{c['redis_hash_bytes_per_reg']:.0f} B; change log capped at ~100k entries, "
          f"{c['redis_stream_bytes_total'] / 1e6:.1f} MB)")
    print(f"read view per registration (Python): {c['view_bytes_per_reg']:.0f} B")
    print(f"full resync of {c['resync_regs']} registrations: {c['resync_s']:.2f} s")
    print(f"one change + QUERY 0 at {c['resync_regs']} regs: "
          f"{c['query_all_rebuild_ms']:.1f} ms unlimited, {c['query_limited_rebuild_ms']:.2f} ms "
          f"with the 10,000 limit")
    for f in results["fanout"]:
        print(f"fan-out to {f['followers']:>3} followers: {f['binds_per_s']:.0f} BIND/s, "
              f"Redis CPU {f['redis_cpu_us_per_bind']:.0f} us per BIND "
              f"({f['xread_calls_per_bind']:.2f} XREAD calls per BIND)")
    k = results["checker"]
    print(f"checker: {k['probed']} probes in {k['round_s']:.2f} s "
          f"({k['probes_per_s']:.0f} probes/s, {k['removed']} removed, "
          f"{k['cpu_us_per_probe']:.0f} us of checker CPU per probe)")
    report_checker_shards(results["checker_shards"])
    print(f"argon2id verify (19 MiB, t=2): {results['argon2id_verify_ms']:.1f} ms per login "
          "per core")
    p = results["postgres"]
    print(f"PostgreSQL account lookup: p50 {p['pg_lookup_p50_us']:.0f} us, "
          f"p99 {p['pg_lookup_p99_us']:.0f} us; {p['pg_lookups_per_s_8conns']:.0f}/s "
          f"over 8 connections")
    results["loadavg_end"] = os.getloadavg()
    print(f"load average (1/5/15 min) at start {results['loadavg_start']}, "
          f"at end {results['loadavg_end']}: other work on the machine skews the figures")
    print("BENCH_SCALING " + json.dumps(results, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
