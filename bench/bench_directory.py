#!/usr/bin/env python3
"""Benchmark of the directory against redis-server, in one run (not a test).

    .venv/bin/python bench/bench_directory.py [--secs 3] [--rounds 3] [--idle 10000] [--metrics]

1. Throughput: ``../shared/bench/loadgen.c`` (compiled with gcc into a temp
   dir) drives 200 authenticated sessions issuing ``QUERY 0 bob`` at depth 1
   and 16 against ``--workers 1`` pinned to CPU 0, loadgen pinned to CPU 1
   (``taskset``); then redis-server answering PING under the same pinning and
   load.  Targets: QUERY >= 0.5x redis PING at depth 1, >= 0.3x at depth 16.
   The same over TLS 1.3 (loadgen ``-S``) against redis-server's TLS port
   (``--tls-port``, with the directory's own Ed25519 server certificate, so
   both do the same cryptography).  Targets: >= 0.6x redis TLS PING at depth
   1, >= 0.5x at depth 16.  Then full TLS handshakes per second (loadgen
   ``-N -S``: connect, handshake, one PING, close; no resumption), directory
   vs redis.  Target: >= 1.0x.
2. Idle memory: 10,000 connections held open (directory sessions logged in),
   bytes per connection from the server's RSS before/while holding them,
   directory vs redis.  Target: <= 1.5x redis; over TLS <= 1.0x redis TLS.
3. ``--workers 4``, unpinned: QUERY throughput.
4. The liveness checker: one round over 10,000 registrations whose peers
   answer PING (a uvloop PONG server in another process).  Target: < 10 s.

``--metrics``: the directories run with ``--metrics 127.0.0.1:0`` (the
cost of counting; nothing scrapes them).

Accounts are created with ``EURECHAT_ARGON2_MEMORY_KIB=8`` so that logging in 10,000
sessions does not dominate the run (login is not what is measured).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import PY, build_loadgen, loadgen, raise_nofile, start_pong_server, taskset
from benchlib import Directory as _Directory


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def tree_rss_kib(pid: int) -> int:
    """RSS of ``pid`` and its descendants (for --workers N)."""
    total = rss_kib(pid)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                total += tree_rss_kib(int(entry))
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


METRICS: list = []  # ["--metrics", "127.0.0.1:0"] with --metrics


def Directory(data_dir: str, *args: str, cpu=None) -> _Directory:
    """Room for the idle-connection phase; BIND to the local listener."""
    return _Directory(data_dir, "--max-connections", "12000", "--bind-policy", "any", *args,
                      *METRICS, cpu=cpu)


def framed(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    return sock.recv(65536)


def prepare_accounts(data_dir: str) -> None:
    env = dict(os.environ, EURECHAT_ARGON2_MEMORY_KIB="8")
    for name, pw in (("bench", "bench-password"), ("bob", "bob-password")):
        subprocess.run([PY, "-m", "eurechat.directory", "useradd", name, "--password-stdin",
                        "--data-dir", data_dir], input=f"{pw}\n", text=True, env=env,
                       check=True, capture_output=True)


def bind_bob(port: int, target_port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for req in (b"USER 0 bob\n", b"PASS 0 bob-password\n",
                    b"BIND 0 127.0.0.1 %d\n" % target_port):
            reply = framed(s, req)
            assert reply.startswith(b"ACK"), reply


def idle_bytes(binary: str, port: int, pid_of, conns: int, extra: list) -> float:
    """Open ``conns`` idle connections with loadgen -i, measure RSS growth."""
    before = pid_of()
    proc = subprocess.Popen([binary, "-i", "-p", str(port), "-c", str(conns), "-t", "4",
                             "-R", "0", *extra], stdout=subprocess.PIPE, text=True,
                            preexec_fn=raise_nofile)
    first = json.loads(proc.stdout.readline())
    if first.get("connected") != conns:
        raise SystemExit(f"idle run: {first}")
    during = pid_of()
    proc.wait(60)
    return (during - before) * 1024 / conns


async def checker_round(n: int, port: int) -> tuple:
    from eurechat.directory.checker import LivenessChecker
    from eurechat.directory.interfaces import Registration
    from eurechat.directory.presence.memory import MemoryRegistry
    registry = MemoryRegistry()
    for i in range(n):
        await registry.bind(Registration(f"peer{i:05d}", "127.0.0.1", port))
    checker = LivenessChecker(registry, interval=3600, probe_timeout=5.0, concurrency=1000)
    started = time.perf_counter()
    probed, removed = await checker.check_round()
    return time.perf_counter() - started, probed, len(removed)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--secs", default="3", help="measured seconds per phase (default 3)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved directory/redis rounds (default 3)")
    ap.add_argument("--idle", type=int, default=10000, help="idle connections (default 10000)")
    ap.add_argument("--checker", type=int, default=10000, help="registrations for the checker")
    ap.add_argument("--metrics", action="store_true",
                    help="run the directories with --metrics 127.0.0.1:0")
    opts = ap.parse_args()
    if opts.metrics:
        METRICS[:] = ["--metrics", "127.0.0.1:0"]
    raise_nofile()
    import eurechat.framing as framing
    try:
        import uvloop  # noqa: F401
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    tmp = tempfile.mkdtemp(prefix="eurechat-bench-")
    results = {}
    try:
        binary = build_loadgen(tmp)
        tls_binary = build_loadgen(tmp, tls=True)
        data_dir = os.path.join(tmp, "data")
        prepare_accounts(data_dir)
        # The directory's identity, created now so redis-server can use its
        # server certificate too (same key type: same handshake cost).
        subprocess.run([PY, "-m", "eurechat.directory", "fingerprint", "--data-dir", data_dir],
                       check=True, capture_output=True)
        tls_dir = os.path.join(data_dir, "tls")
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        target = listener.getsockname()[1]
        query = ["-c", "200", "-d", "1,16", "-t", opts.secs, "-w", "1",
                 "-q", r"QUERY 0 bob\n", "-L", "bench:bench-password"]
        print(f"framing={framing.IMPLEMENTATION} loop={loop_name} cpus={os.cpu_count()} "
              f"metrics={'on' if opts.metrics else 'off'}", flush=True)

        # 1+2. pinned throughput, directory --workers 1 vs redis PING, interleaved
        # rounds (both servers up, pinned to CPU 0, loaded in turn from CPU 1) so
        # that load from other processes hits both sides alike; the median of the
        # per-round ratios is reported.  Then the idle-connection memory of each.
        d = Directory(data_dir, cpu=0)
        rport = free_port()
        rtport = free_port()
        redis = subprocess.Popen(
            taskset(0) + ["redis-server", "--port", str(rport), "--save", "",
                          "--appendonly", "no", "--maxclients", str(opts.idle + 100),
                          "--bind", "127.0.0.1", "--tls-port", str(rtport),
                          "--tls-cert-file", os.path.join(tls_dir, "server.crt"),
                          "--tls-key-file", os.path.join(tls_dir, "server.key"),
                          "--tls-ca-cert-file", os.path.join(tls_dir, "ca.crt"),
                          "--tls-auth-clients", "no"],
            stdout=subprocess.PIPE, text=True, preexec_fn=raise_nofile)
        try:
            for line in redis.stdout:
                if "Ready to accept connections" in line:
                    break
            bind_bob(d.port, target)
            rounds, tls_rounds, churn = [], [], []
            churn_args = ["-N", "-S", "-c", "32", "-t", opts.secs, "-w", "1"]
            for _ in range(opts.rounds):
                dq = {p["depth"]: p for p in loadgen(binary, d.port, *query, cpu=1)}
                rp = {p["depth"]: p for p in loadgen(
                    binary, rport, "-r", "-c", "200", "-d", "1,16", "-t", opts.secs,
                    "-w", "1", cpu=1)}
                rounds.append((dq, rp))
                dt = {p["depth"]: p for p in loadgen(tls_binary, d.port, "-S", *query, cpu=1)}
                rt = {p["depth"]: p for p in loadgen(
                    tls_binary, rtport, "-S", "-r", "-c", "200", "-d", "1,16", "-t",
                    opts.secs, "-w", "1", cpu=1)}
                tls_rounds.append((dt, rt))
                dn = loadgen(tls_binary, d.port, *churn_args, cpu=1)[0]
                rn = loadgen(tls_binary, rtport, *churn_args, "-r", cpu=1)[0]
                churn.append((dn, rn))
                print("round:", {k: (dq[k]["req_per_s"], rp[k]["req_per_s"]) for k in dq},
                      "tls:", {k: (dt[k]["req_per_s"], rt[k]["req_per_s"]) for k in dt},
                      "handshakes/s:", (dn["cycles_per_s"], rn["cycles_per_s"]), flush=True)
            results["rounds"] = rounds
            results["tls_rounds"] = tls_rounds
            results["churn"] = churn
            results["idle_directory"] = idle_bytes(
                binary, d.port, lambda: rss_kib(d.proc.pid), opts.idle,
                ["-L", "bench:bench-password", "-B", "512"])
            results["idle_redis"] = idle_bytes(binary, rport, lambda: rss_kib(redis.pid),
                                               opts.idle, ["-r"])
            results["idle_directory_tls"] = idle_bytes(
                tls_binary, d.port, lambda: rss_kib(d.proc.pid), opts.idle,
                ["-S", "-L", "bench:bench-password", "-B", "512"])
            results["idle_redis_tls"] = idle_bytes(
                tls_binary, rtport, lambda: rss_kib(redis.pid), opts.idle, ["-S", "-r"])
        finally:
            d.stop()
            redis.terminate()
            redis.wait(10)

        # 3. --workers 4, unpinned
        d = Directory(data_dir, "--workers", "4")
        try:
            bind_bob(d.port, target)
            phases = loadgen(binary, d.port, *query)
            results["workers4"] = {p["depth"]: p for p in phases}
        finally:
            d.stop()

        # 4. the liveness checker over 10,000 registrations
        pport = free_port()
        pong = start_pong_server(pport)
        try:
            results["checker"] = asyncio.run(checker_round(opts.checker, pport))
        finally:
            pong.terminate()
            pong.wait(10)
        listener.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    w = results["workers4"]
    rounds = results["rounds"]
    print()
    print(f"| measure | directory | redis-server | ratio (median of {len(rounds)} rounds) "
          "| target |")
    print("|---|---|---|---|---|")
    for depth, target in ((1, 0.5), (16, 0.3)):
        ratios = sorted(dq[depth]["req_per_s"] / rp[depth]["req_per_s"] for dq, rp in rounds)
        ratio = statistics.median(ratios)
        dir_rps = statistics.median(dq[depth]["req_per_s"] for dq, _ in rounds)
        red_rps = statistics.median(rp[depth]["req_per_s"] for _, rp in rounds)
        ok = "ok" if ratio >= target else "BELOW"
        print(f"| QUERY 0 bob vs PING, 200 conns, depth {depth}, pinned (req/s, median) | "
              f"{dir_rps:.0f} | {red_rps:.0f} | {ratio:.2f}x "
              f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}) | >= {target}x {ok} |")
    for depth, target in ((1, 0.6), (16, 0.5)):
        pairs = results["tls_rounds"]
        ratios = sorted(dt[depth]["req_per_s"] / rt[depth]["req_per_s"] for dt, rt in pairs)
        ratio = statistics.median(ratios)
        dir_rps = statistics.median(dt[depth]["req_per_s"] for dt, _ in pairs)
        red_rps = statistics.median(rt[depth]["req_per_s"] for _, rt in pairs)
        ok = "ok" if ratio >= target else "BELOW"
        print(f"| TLS: QUERY 0 bob vs PING, 200 conns, depth {depth}, pinned (req/s, median) | "
              f"{dir_rps:.0f} | {red_rps:.0f} | {ratio:.2f}x "
              f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}) | >= {target}x {ok} |")
    ratios = sorted(dn["cycles_per_s"] / rn["cycles_per_s"] for dn, rn in results["churn"])
    ratio = statistics.median(ratios)
    print(f"| full TLS handshakes/s (connect, handshake, PING, close; 32 slots), one worker "
          f"| {statistics.median(dn['cycles_per_s'] for dn, _ in results['churn']):.0f} "
          f"| {statistics.median(rn['cycles_per_s'] for _, rn in results['churn']):.0f} "
          f"| {ratio:.2f}x (rounds: {', '.join(f'{x:.2f}' for x in ratios)}) "
          f"| >= 1.0x {'ok' if ratio >= 1.0 else 'BELOW'} |")
    for label, mine, theirs, limit in (
            ("", "idle_directory", "idle_redis", 1.5),
            ("TLS ", "idle_directory_tls", "idle_redis_tls", 1.0)):
        if results[theirs] > 0:  # a small --idle may not move redis's RSS at all
            ratio = results[mine] / results[theirs]
            verdict = f"{ratio:.2f}x | <= {limit}x {'ok' if ratio <= limit else 'ABOVE'}"
        else:
            verdict = f"n/a (redis RSS did not grow: use a larger --idle) | <= {limit}x"
        print(f"| {label}idle bytes per connection, {opts.idle} conns | {results[mine]:.0f} | "
              f"{results[theirs]:.0f} | {verdict} |")
    for depth in (1, 16):
        print(f"| --workers 4 unpinned, depth {depth} (req/s) | {w[depth]['req_per_s']:.0f} | "
              f"| | |")
    secs, probed, removed = results["checker"]
    print(f"| liveness round, {probed} registrations | {secs:.2f} s ({removed} removed) | | | "
          f"< 10 s {'ok' if secs < 10 else 'ABOVE'} |")
    groups = [w] + [g for pair in rounds + results["tls_rounds"] for g in pair]
    errors = sum(p.get("errors", 0) + p.get("disconnects", 0)
                 for group in groups for p in group.values())
    print(f"\nerrors+disconnects across runs: {errors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
