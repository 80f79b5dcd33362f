"""Real infrastructure for tests: a ``redis-server`` and a throwaway PostgreSQL
cluster, each in its own temporary directory on a free loopback port.

Why real servers and not fakes: the distributed backends are only as correct as
their behaviour against the real thing (Lua atomicity, stream semantics,
connection loss, crash recovery).  These helpers can also *kill* and *restart*
a server on the same port and data directory, which is what the fault tests
need ("Redis dies while the directory runs, then comes back").

Readiness is an event, not a sleep: a reader thread follows each server's log
and the start call returns when the server says it accepts connections.

PostgreSQL refuses to run as root, and CI runs as root, so the cluster is
initialised and run as an unprivileged system user (``eurechat-test``, created
when absent and possible, else ``nobody``) through ``subprocess``'s
``user=``/``group=`` switch.
"""

from __future__ import annotations

import collections
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from typing import Deque, List, Optional, Sequence

__all__ = ["free_port", "RedisServer", "PostgresCluster", "postgres_bin", "test_user"]

READY_TIMEOUT = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (loopback only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def postgres_bin(name: str) -> str:
    """Path of a PostgreSQL server binary (Debian keeps them off PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return found[-1]
    path = shutil.which(name)
    if path:
        return path
    raise RuntimeError(f"PostgreSQL binary {name!r} not found (apt-get install postgresql)")


_user_lock = threading.Lock()


def test_user() -> Optional[pwd.struct_passwd]:
    """The unprivileged account to run PostgreSQL as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    with _user_lock:
        for name in ("eurechat-test",):
            try:
                return pwd.getpwnam(name)
            except KeyError:
                pass
        useradd = shutil.which("useradd")
        if useradd:
            subprocess.run([useradd, "-r", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
                            "eurechat-test"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
            try:
                return pwd.getpwnam("eurechat-test")
            except KeyError:
                pass
        return pwd.getpwnam("nobody")


class _Process:
    """A server child in its own process group whose merged output is followed
    by a thread; ``wait_for`` blocks until a line contains a marker."""

    def __init__(self, argv: Sequence[str], ready_marker: str, *,
                 user: Optional[pwd.struct_passwd] = None, cwd: Optional[str] = None,
                 env: Optional[dict] = None) -> None:
        kwargs = {}
        if user is not None:
            kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        self.argv = list(argv)
        self.lines: Deque[str] = collections.deque(maxlen=200)
        self._ready = threading.Event()
        self._ended = threading.Event()
        self._marker = ready_marker
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=cwd, env=env, start_new_session=True, **kwargs)
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            if self._marker in line:
                self._ready.set()
        self._ended.set()
        self._ready.set()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        if not self._ready.wait(timeout) or self._ended.is_set():
            self.kill()
            tail = "\n".join(self.lines)
            raise RuntimeError(f"{self.argv[0]} did not become ready:\n{tail}")

    def log_contains(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash) and reap it."""
        self.signal(signal.SIGKILL)
        self.proc.wait(10)
        self._thread.join(5)

    def terminate(self, timeout: float = 10.0) -> None:
        """A clean shutdown; falls back to SIGKILL when it takes too long."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


class RedisServer:
    """A real ``redis-server`` on 127.0.0.1 with an append-only file fsynced on
    every write, so a SIGKILL loses nothing that Redis acknowledged."""

    def __init__(self, directory: Optional[str] = None, port: Optional[int] = None,
                 appendfsync: str = "always") -> None:
        self.appendfsync = appendfsync  # "everysec": Redis's default, for benchmarks
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self._own_dir = directory is None
        self.dir = directory or tempfile.mkdtemp(prefix="eurechat-redis-")
        self.port = port or free_port()
        self._proc: Optional[_Process] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_db(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.proc.poll() is None

    def start(self) -> RedisServer:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.dir, "--appendonly", "yes", "--appendfsync", self.appendfsync,
                "--save", "", "--daemonize", "no", "--logfile", "",
                "--databases", "16", "--protected-mode", "yes", "--loglevel", "notice"]
        self._proc = _Process(argv, "Ready to accept connections", cwd=self.dir)
        self._proc.wait_ready()
        return self

    def kill(self) -> None:
        """Crash it (SIGKILL): clients see their connections reset."""
        if self._proc is not None:
            self._proc.kill()
            self._proc = None

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc = None

    def restart(self) -> None:
        """Start again on the same port and data (AOF replayed)."""
        self.kill()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class PostgresCluster:
    """A throwaway PostgreSQL cluster: ``initdb`` into a temporary directory, run
    as an unprivileged user, listening on a free loopback port (and a unix
    socket in the same directory).  fsync is off (a test database need not
    survive a power cut), but commits are still written before they are
    acknowledged, so a SIGKILL of the server loses nothing committed."""

    def __init__(self, port: Optional[int] = None) -> None:
        self.user = test_user()
        self.base = tempfile.mkdtemp(prefix="eurechat-pg-")
        self.data = os.path.join(self.base, "data")
        self.port = port or free_port()
        self._proc: Optional[_Process] = None
        self._counter = 0
        if self.user is not None:
            os.chown(self.base, self.user.pw_uid, self.user.pw_gid)
        self._env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
                     "LANG": "C", "HOME": self.base, "TZ": "UTC"}

    def _run(self, argv: List[str]) -> None:
        kwargs = {}
        if self.user is not None:
            kwargs.update(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, cwd=self.base, env=self._env,
                              timeout=120, **kwargs)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}):\n"
                               + done.stdout.decode("utf-8", "replace"))

    def init(self) -> PostgresCluster:
        self._run([postgres_bin("initdb"), "-D", self.data, "-U", "postgres", "--auth=trust",
                   "--no-sync", "-E", "UTF8", "--locale=C", "--no-instructions"])
        return self

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.proc.poll() is None

    def start(self) -> PostgresCluster:
        if not os.path.exists(os.path.join(self.data, "PG_VERSION")):
            self.init()
        argv = [postgres_bin("postgres"), "-D", self.data, "-k", self.base,
                "-h", "127.0.0.1", "-p", str(self.port),
                "-c", "fsync=off", "-c", "full_page_writes=off",
                "-c", "max_connections=300", "-c", "shared_buffers=32MB",
                "-c", "logging_collector=off", "-c", "log_min_error_statement=panic"]
        self._proc = _Process(argv, "database system is ready to accept connections",
                              user=self.user, cwd=self.base, env=self._env)
        self._proc.wait_ready()
        return self

    def create_database(self, prefix: str = "t") -> str:
        """A fresh, empty database on this cluster; returns its DSN."""
        import psycopg

        self._counter += 1
        name = f"{prefix}_{os.getpid()}_{self._counter}"
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def kill(self) -> None:
        """Crash it: SIGKILL the postmaster and every backend."""
        if self._proc is not None:
            self._proc.kill()
            self._proc = None

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.signal(signal.SIGINT)  # "fast" shutdown
            try:
                self._proc.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
            self._proc.kill()
            self._proc = None

    def restart(self) -> None:
        """Start again on the same port and data directory (crash recovery runs)."""
        self.kill()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
