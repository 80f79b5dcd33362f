#!/usr/bin/env python3
"""Benchmark of peer-to-peer delivery.  Not a test.

Two peers in two processes (alice here, bob a child process), each with its
own SQLite outbox/inbox (WAL, synchronous=FULL) in a temporary directory, on
loopback.  A message counts once it was

  queued     committed to alice's outbox,
  delivered  sent to bob, committed to bob's inbox, ACKed by bob,
  done       and its outbox row deleted (committed) at alice: the
             ``delivered`` event.

Measured:
  1. throughput: N messages alice -> bob, offered as fast as the engine takes
     them (producer keeps at most --backlog unacknowledged), msgs/s;
  2. latency: at a fixed offered load (--rate msgs/s for --seconds), the
     time from send() to the ``delivered`` event, p50/p99/max;
  3. the ceiling: the same MESSAGE/ACK exchange over a bare asyncio socket
     with no storage at all (same framing, same process layout).

Targets: >= 20,000 msgs/s sustained; p99 <= 20 ms at 1,000 msgs/s.

    .venv/bin/python bench/bench_peer.py [--count 100000] [--repeat 3] [--rate 1000] [--seconds 5] [--keys]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

TARGET_RATE = 20_000
TARGET_P99_MS = 20.0


# -- child: bob ------------------------------------------------------------------
async def bob_main(data_dir: str, bare: bool) -> None:
    loop = asyncio.get_running_loop()
    if bare:
        from eurechat.framing import Decoder

        class Bare(asyncio.Protocol):
            def connection_made(self, transport):
                self.t = transport
                self.d = Decoder()

            def data_received(self, data):
                acks = [b"ACK 0 %s\n" % m.args[1].encode() for m in self.d.feed(data)]
                if acks:
                    self.t.write(b"".join(acks))

        server = await loop.create_server(Bare, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    else:
        from eurechat.peer import Peer

        peer = Peer("bob", data_dir=data_dir)
        # Shown = handed to the program; advance the display cursor per batch.
        peer._on_messages = lambda msgs: peer.mark_shown(msgs[-1].seq)
        await peer.start()
        port = peer.address[1]
    print(json.dumps({"port": port}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)   # until the parent closes stdin


# -- parent: alice -----------------------------------------------------------------
def start_bob(bare: bool, data_dir: str, uvloop: bool) -> tuple:
    argv = [sys.executable, os.path.abspath(__file__), "--role", "bob", "--data-dir", data_dir]
    if bare:
        argv.append("--bare")
    if uvloop:
        argv.append("--uvloop")
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    line = proc.stdout.readline()
    return proc, json.loads(line)["port"]


def stop_bob(proc) -> None:
    proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def peer_throughput(port: int, data_dir: str, count: int, backlog: int) -> float:
    from eurechat.peer import Peer

    done = asyncio.Event()
    delivered = 0

    def on_event(e):
        nonlocal delivered
        if e["event"] == "delivered":
            delivered += 1
            if delivered == count:
                done.set()

    async with Peer("alice", data_dir=data_dir, addresses={"bob": ("127.0.0.1", port)},
                    on_event=on_event) as alice:
        # Warm up the connection (and both SQLite files) first.
        await alice.send("bob", "warm-up")
        while delivered < 1:
            await asyncio.sleep(0.01)
        delivered = 0
        text = "x" * 60
        t0 = time.perf_counter()
        sent = 0
        while sent < count:
            room = min(backlog - (sent - delivered), count - sent, 2000)
            for _ in range(room):
                alice.send_nowait("bob", text)
            sent += room
            await asyncio.sleep(0)
        await done.wait()
        rate = count / (time.perf_counter() - t0)
        conn = alice._routes["bob"].conn
        print(f"  link to bob: {'mutual TLS, bob proven by certificate' if conn.verified else 'not authenticated'}")
        return rate


async def peer_latency(port: int, data_dir: str, rate: float, seconds: float) -> list:
    from eurechat.peer import Peer

    sent_at: dict = {}
    lat: list = []
    finished = asyncio.Event()
    total = int(rate * seconds)

    def on_event(e):
        if e["event"] == "delivered":
            t = sent_at.pop(e["id"], None)
            if t is not None:
                lat.append((time.perf_counter() - t) * 1000.0)
                if len(lat) == total:
                    finished.set()

    async with Peer("alice", data_dir=data_dir, addresses={"bob": ("127.0.0.1", port)},
                    on_event=on_event) as alice:
        await alice.send("bob", "warm-up")
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        for i in range(total):
            target = start + i / rate
            delay = target - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            msgid, _ = alice.send_nowait("bob", f"latency probe {i}")
            sent_at[msgid] = time.perf_counter()
        await asyncio.wait_for(finished.wait(), 60)
    return lat


async def bare_throughput(port: int, count: int, backlog: int) -> float:
    loop = asyncio.get_running_loop()
    from eurechat.framing import Decoder

    acked = 0
    done = asyncio.Event()
    can_send = asyncio.Event()

    class Client(asyncio.Protocol):
        def connection_made(self, transport):
            self.d = Decoder()

        def data_received(self, data):
            nonlocal acked
            acked += len(self.d.feed(data))
            can_send.set()
            if acked >= count:
                done.set()

    transport, _ = await loop.create_connection(Client, "127.0.0.1", port)
    payload = b"x" * 60
    t0 = time.perf_counter()
    sent = 0
    while sent < count:
        room = min(backlog - (sent - acked), count - sent, 2000)
        if room <= 0:
            can_send.clear()
            await can_send.wait()
            continue
        transport.write(b"".join(b"MESSAGE %d alice m%d\n%s" % (len(payload), sent + i, payload)
                                 for i in range(room)))
        sent += room
        await asyncio.sleep(0)
    await done.wait()
    rate = count / (time.perf_counter() - t0)
    transport.close()
    return rate


class Keys:
    """``--keys``: the peers enrolled with a directory (started here) and
    each pinning the other's key, so alice's links to bob (fixed address, no
    directory during the run) are mutual TLS requiring bob's key (SPEC §5.4)."""

    def __init__(self, tmp: str) -> None:
        import re
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eurechat.directory", "--port", "0", "--data-dir",
             os.path.join(tmp, "directory")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, "EURECHAT_ARGON2_MEMORY_KIB": "8"})
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            m = re.match(rb"^eurechat-directory listening on (.+):(\d+)$", raw.strip())
            if m:
                self.address = (m.group(1).decode(), int(m.group(2)))
                break
        else:
            raise SystemExit("the directory did not start")

    def enrol(self, alice_dir: str, bob_dir: str) -> None:
        from eurechat.peer import Peer
        from eurechat.peer.credentials import Credentials
        from eurechat.peer.pins import Pins

        async def login(name: str, data_dir: str) -> str:
            p = Peer(name, "bench-password-1", directory=self.address, register=True,
                     data_dir=data_dir)
            await p.start()
            await p.close()
            creds = Credentials.load(data_dir, name)
            assert creds is not None, f"{name} was not certified"
            return creds.fingerprint

        fa = asyncio.run(login("alice", alice_dir))
        fb = asyncio.run(login("bob", bob_dir))
        Pins(alice_dir, "alice").check("bob", fb)
        Pins(bob_dir, "bob").check("alice", fa)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def pct(values: list, p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", default="alice", choices=["alice", "bob"], help=argparse.SUPPRESS)
    ap.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=100_000, help="messages for the throughput run")
    ap.add_argument("--backlog", type=int, default=10_000,
                    help="most unacknowledged messages the producer keeps in flight")
    ap.add_argument("--rate", type=float, default=1000.0, help="offered load for latency")
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of the latency run")
    ap.add_argument("--uvloop", action="store_true", help="run both peers on uvloop")
    ap.add_argument("--repeat", type=int, default=3, help="throughput runs (median reported)")
    ap.add_argument("--keys", action="store_true",
                    help="enrolled peers: authenticated (mutual TLS) links")
    args = ap.parse_args()
    if args.uvloop:
        import uvloop
        uvloop.install()
    if args.role == "bob":
        asyncio.run(bob_main(args.data_dir, args.bare))
        return 0

    import eurechat.framing as framing
    print(f"framing: {framing.IMPLEMENTATION}; loop: {'uvloop' if args.uvloop else 'asyncio'}; "
          f"cpus: {os.cpu_count()}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="eurechat-bench-") as tmp:
        keys = Keys(tmp) if args.keys else None
        if keys is not None:
            import shutil
            keys.enrol(os.path.join(tmp, "alice0"), os.path.join(tmp, "bob0"))
            keys.close()
            for i in range(1, max(args.repeat, 3)):   # one key per user: the same files
                for name in ("alice", "bob"):
                    shutil.copytree(os.path.join(tmp, f"{name}0"), os.path.join(tmp, f"{name}{i}"))
        rates = []
        for i in range(args.repeat):
            proc, port = start_bob(False, os.path.join(tmp, f"bob{i}"), args.uvloop)
            try:
                rates.append(asyncio.run(peer_throughput(
                    port, os.path.join(tmp, f"alice{i}"), args.count, args.backlog)))
            finally:
                stop_bob(proc)
        rate = statistics.median(rates)
        results["rate"] = rate
        proc, port = start_bob(False, os.path.join(tmp, "bob2"), args.uvloop)
        try:
            lat = asyncio.run(peer_latency(port, os.path.join(tmp, "alice2"), args.rate,
                                           args.seconds))
        finally:
            stop_bob(proc)
        ceilings = []
        for _ in range(args.repeat):
            proc, port = start_bob(True, "", args.uvloop)
            try:
                ceilings.append(asyncio.run(bare_throughput(port, args.count, args.backlog)))
            finally:
                stop_bob(proc)
        ceiling = statistics.median(ceilings)
    p50, p99, mx = pct(lat, 50), pct(lat, 99), max(lat)
    spread = lambda xs: f"runs {', '.join(f'{x:,.0f}' for x in xs)}"  # noqa: E731
    print(f"durable delivery : {rate:>10,.0f} msgs/s  median of {args.repeat} x {args.count:,} "
          f"messages alice -> bob, queued+delivered+recorded+ACKed ({spread(rates)})  "
          f"target >= {TARGET_RATE:,}  {'OK' if rate >= TARGET_RATE else 'MISSED'}")
    print(f"bare socket      : {ceiling:>10,.0f} msgs/s  same MESSAGE/ACK frames, no storage: "
          f"the ceiling ({spread(ceilings)})  durable/bare = {rate / ceiling:.2f}")
    print(f"latency @ {args.rate:,.0f}/s : p50 {p50:.2f} ms  p99 {p99:.2f} ms  max {mx:.2f} ms  "
          f"mean {statistics.mean(lat):.2f} ms  ({len(lat):,} messages, send() -> delivered)  "
          f"target p99 <= {TARGET_P99_MS:.0f} ms  {'OK' if p99 <= TARGET_P99_MS else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
