"""What the directory benchmarks share (``bench_directory.py``, ``bench_scaling.py``):
building and running ``../shared/bench/loadgen.c``, CPU pinning, starting a
directory and waiting for its ready line, and a PONG-answering peer process.

Benchmarks are scripts, not tests: they run in one process each, print their
numbers, and import this module from their own folder (``ci/``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADGEN_C = os.path.join(ROOT, "..", "shared", "bench", "loadgen.c")
if not os.path.exists(LOADGEN_C):  # a worktree elsewhere than beside shared/
    LOADGEN_C = "/work/shared/bench/loadgen.c"
READY = re.compile(r"listening on (.+):(\d+)")
PY = sys.executable

__all__ = ["ROOT", "LOADGEN_C", "READY", "PY", "raise_nofile", "taskset", "build_loadgen",
           "loadgen", "Directory", "pong_server_main", "start_pong_server"]


def raise_nofile() -> None:
    """Soft descriptor limit up to the hard one (10,000 connections need it);
    also used as ``preexec_fn`` so that children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def taskset(cpu) -> list:
    """``taskset -c CPU`` prefix, or nothing when pinning is impossible."""
    if cpu is None or not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        return []
    return ["taskset", "-c", str(cpu)]


def build_loadgen(directory: str, tls: bool = False) -> str:
    """Compile loadgen.c into ``directory``; returns the binary's path.  With
    ``tls`` it is linked with OpenSSL (``-S``; needs libssl-dev)."""
    binary = os.path.join(directory, "loadgen-tls" if tls else "loadgen")
    extra = (["-DLOADGEN_TLS"], ["-lssl", "-lcrypto"]) if tls else ([], [])
    subprocess.run(["gcc", "-O2", *extra[0], "-o", binary, LOADGEN_C, *extra[1]], check=True)
    return binary


def loadgen(binary: str, port: int, *args: str, cpu=None) -> list:
    """Run loadgen against 127.0.0.1:``port``; its JSON phase lines, parsed."""
    out = subprocess.run(taskset(cpu) + [binary, "-p", str(port), *args],
                         capture_output=True, text=True, preexec_fn=raise_nofile)
    if out.returncode not in (0, 3):
        raise SystemExit(f"loadgen failed ({out.returncode}): {out.stderr}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


class Directory:
    """``python -m eurechat.directory --port 0 ...`` in its own process group,
    cheap password hashes (login is not what is measured), checker idle, ready line read."""

    def __init__(self, data_dir: str, *args: str, cpu=None) -> None:
        env = dict(os.environ, EURECHAT_ARGON2_MEMORY_KIB="8", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            taskset(cpu) + [PY, "-m", "eurechat.directory", "--port", "0", "--data-dir",
                            data_dir, "--log-level", "warning", "--check-interval", "3600",
                            *args],
            stdout=subprocess.PIPE, text=True, env=env, start_new_session=True,
            preexec_fn=raise_nofile)
        line = self.proc.stdout.readline()
        m = READY.search(line)
        if not m:
            self.stop()
            raise SystemExit(f"directory did not start: {line!r}")
        self.port = int(m.group(2))

    def stop(self) -> None:
        """SIGTERM, then whatever is left of the group is killed."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, 9)
        except ProcessLookupError:
            pass
        self.proc.wait()


def pong_server_main(port: int) -> None:
    """Peers: answer ``PING 0 <nonce>`` with ``PONG 0 <nonce>``; accept BIND probes."""
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    class Pong(asyncio.Protocol):
        def connection_made(self, transport):
            self.t = transport
            self.buf = b""

        def data_received(self, data):
            self.buf += data
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if line.startswith(b"PING 0"):
                    self.t.write(b"PONG 0" + line[6:] + b"\n")

    async def main():
        server = await asyncio.get_running_loop().create_server(
            Pong, "127.0.0.1", port, backlog=4096)
        print("ready", flush=True)
        await server.serve_forever()

    asyncio.run(main())


def start_pong_server(port: int, cpu=None) -> subprocess.Popen:
    """``pong_server_main`` in another process; returns once it listens."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = (f"import sys; sys.path.insert(0, {here!r}); import benchlib; "
            f"benchlib.pong_server_main({port})")
    proc = subprocess.Popen(taskset(cpu) + [PY, "-c", code], stdout=subprocess.PIPE,
                            text=True, preexec_fn=raise_nofile)
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise SystemExit("PONG server did not start")
    return proc
