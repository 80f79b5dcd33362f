"""A person's mistake on the directory's command line: one clear line (the
short usage line and the error last, for a usage error), exit 2, never a
traceback, never a runaway."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from support.processes import (
    directory_cmd,
    run_directory,
    start_process,
    test_env,
)


def run(args: List[str], env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(directory_cmd() + args, capture_output=True, text=True, timeout=60,
                          env=env or test_env(), stdin=kw.pop("stdin", subprocess.DEVNULL), **kw)


def without(tmp_path: Path, *modules: str) -> dict:
    """An environment in which importing each of ``modules`` fails as it does
    when the package is not installed (a module of that name, first on the
    path, that raises ModuleNotFoundError)."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    for name in modules:
        (shim / f"{name}.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n")
    path = os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))
    return test_env(PYTHONPATH=path)


def assert_one_line(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], res.stderr
    return lines[0]


@pytest.mark.parametrize("args,module,extra", [
    (["--registry", "redis://127.0.0.1:1/0"], "redis", "redis"),
    (["--workers", "2", "--throttle", "redis://127.0.0.1:1/0"], "redis", "redis"),
    (["--accounts", "postgresql://nobody@127.0.0.1:1/db"], "psycopg", "postgres"),
    (["useradd", "zoe", "--password-stdin", "--accounts",
      "postgresql://nobody@127.0.0.1:1/db"], "psycopg", "postgres"),
    (["users", "--accounts", "postgres://nobody@127.0.0.1:1/db"], "psycopg", "postgres"),
])
def test_a_missing_optional_dependency_names_the_extra_to_install(tmp_path, args, module,
                                                                   extra):
    res = run(args + ["--data-dir", str(tmp_path / "data"), *(
        ["--port", "0"] if args[0].startswith("--") else [])],
        env=without(tmp_path, module))
    assert res.returncode == 2, res.stderr
    assert_one_line(res, f"pip install 'eurechat[{extra}]'", module)
    assert "listening" not in res.stdout


def test_workers_above_the_maximum_is_a_usage_error_before_anything_starts(tmp_path):
    from eurechat.directory.cli import MAX_WORKERS
    res = run(["--workers", str(MAX_WORKERS + 1), "--port", "0",
               "--data-dir", str(tmp_path)])
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("usage: eurechat-directory ") and len(lines[0]) < 140
    assert lines[1] == (f"eurechat-directory: error: argument --workers: "
                        f"must be <= {MAX_WORKERS}")
    assert not (tmp_path / "directory.sqlite3").exists()
    res = run(["--workers", "100000", "--port", "0", "--data-dir", str(tmp_path)])
    assert res.returncode == 2 and "must be <=" in res.stderr


def test_more_workers_than_cpus_is_a_warning(tmp_path):
    cpus = len(os.sched_getaffinity(0))
    d = start_process(directory_cmd() + ["--workers", str(cpus + 1), "--port", "0",
                                         "--data-dir", str(tmp_path)],
                      ready=r"^eurechat-directory listening on ", env=test_env(), timeout=60)
    try:
        line = d.wait_for_log(r"WARNING: --workers \d+ is more than the \d+ CPU").string
        assert f"--workers {cpus + 1} is more than the {cpus} CPU" in line
    finally:
        assert d.stop() == 0


#: Every worker stops in ``site`` for good (it never says it serves), so the
#: supervisor is in its start-up for as long as it waits for them; each says
#: so on stderr (the supervisor's), for the test to wait on.
HOLD_WORKERS = '''
import os, signal, sys
with open("/proc/self/cmdline", "rb") as _f:
    if b"--worker-fd" in _f.read().split(b"\\0"):
        sys.stderr.write("held worker %d\\n" % os.getpid())
        sys.stderr.flush()
        while True:
            signal.pause()
'''


def test_sigterm_during_start_up_stops_every_process_within_5_s(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HOLD_WORKERS)
    env = test_env(PYTHONPATH=os.pathsep.join(filter(None, [str(site),
                                                            os.environ.get("PYTHONPATH")])))
    d = start_process(directory_cmd() + ["--workers", "32", "--port", "0",
                                         "--data-dir", str(tmp_path / "data"),
                                         "--log-level", "warning"], env=env)
    try:
        for i in range(32):   # every worker started, none serving: mid start-up
            d.wait_for_log(r"^held worker \d+$", start=i, timeout=60)
        group = d.group_alive()
        assert len(group) >= 1 + 32, group
        d.send_signal(signal.SIGTERM)
        assert d.wait_group_gone(5.0) == [], d.stderr()
        assert d.wait(5) == 0, d.stderr()
        assert "Traceback" not in d.stderr()
    finally:
        d.kill_group()


def test_useradd_without_a_terminal_or_password_stdin_is_one_line(tmp_path):
    # start_new_session: no controlling terminal to ask on; stdin is not one either.
    res = run(["useradd", "zoe", "--data-dir", str(tmp_path)], start_new_session=True)
    assert res.returncode == 2
    assert_one_line(res, "eurechat-directory: no password:", "--password-stdin")
    assert run(["users", "--data-dir", str(tmp_path)]).stdout == ""


def test_usage_errors_are_a_short_usage_line_then_the_error(tmp_path):
    for args, error in [
        (["--log-level", "LOUD"], "argument --log-level: invalid choice: 'LOUD'"),
        (["--port", "70000"], "argument --port: must be 0-65535"),
        (["--workers", "2", "--registry", "memory"], "--registry memory keeps presence"),
        (["useradd"], "the following arguments are required: name"),
    ]:
        res = run(args + ["--data-dir", str(tmp_path)])
        assert res.returncode == 2, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 2, (args, res.stderr)
        assert lines[0].startswith("usage: eurechat-directory") and len(lines[0]) < 140
        assert lines[0].endswith("--help lists every option)")
        assert lines[1].startswith("eurechat-directory") and error in lines[1], lines


BAD_OPTIONS = [
    ["--workers", "0"], ["--workers", "2", "--registry", "memory"],
    ["--registry", "ftp://x"], ["--bind-policy", "maybe"],
    ["--port", "70000"], ["--port", "-1"], ["--port", "http"],
    ["--accounts", "mysql://db"], ["--throttle", "bogus"],
    ["--probe-concurrency", "0"], ["--query-limit", "0"], ["--query-limit", "-1"],
    ["--throttle-limit", "0"], ["--high-water", "-5"], ["--preauth-max-payload", "-1"],
    ["--max-payload", "-1"], ["--max-connections", "0"], ["--check-interval", "0"],
    ["--manager-restarts", "-1"], ["--manager-restart-window", "0"],
    ["useradd", "x", "--accounts", "mysql://db"],
]


def test_bad_options_exit_2(tmp_path):
    """Every bad value is a usage error (exit 2, the option named), never a
    traceback nor a server that starts and misbehaves (a checker with no probe
    slot, a negative query limit dropping the last registration...)."""
    procs = [(args, subprocess.Popen(
        directory_cmd() + args + ["--data-dir", str(tmp_path)], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=test_env()))
        for args in BAD_OPTIONS]
    for args, proc in procs:
        try:
            out, errors = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == 2, (args, errors)
        assert "Traceback" not in errors and "listening" not in out, args
        option = next(a for a in args if a.startswith("--"))
        assert option in errors, (args, errors)


@pytest.mark.parametrize("first,second", [("1", "1"), ("2", "2"), ("2", "1"), ("1", "2")])
def test_port_in_use_is_a_clear_error(tmp_path, first, second):
    """A second directory on a taken port exits 2 with a message (and, with
    SO_REUSEPORT workers, never silently shares the port)."""
    with run_directory("--workers", first, data_dir=str(tmp_path / "a")) as d:
        out = subprocess.run(
            directory_cmd() + ["--port", str(d.port), "--workers", second, "--data-dir",
                               str(tmp_path / "b")],
            capture_output=True, text=True, timeout=30, env=test_env())
        assert out.returncode == 2
        assert f"cannot listen on 127.0.0.1:{d.port}" in out.stderr
        assert "Traceback" not in out.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_unusable_data_dir_is_one_error_and_exit_2(tmp_path, workers):
    """A data directory that cannot be created (a file is in the way): one clear
    error and exit 2, also with N workers (checked once, before spawning them)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = subprocess.run(directory_cmd() + ["--port", "0", "--workers", workers,
                                            "--data-dir", str(blocker / "data")],
                         capture_output=True, text=True, timeout=30, env=test_env())
    assert out.returncode == 2, out.stderr
    assert "cannot start: cannot open" in out.stderr and "listening" not in out.stdout
    assert "Traceback" not in out.stderr and "did not start" not in out.stderr


@pytest.mark.parametrize("option,value,why", [
    ("--lease", "nan", "must be a finite number > 0"),
    ("--lease", "inf", "must be a finite number > 0"),
    ("--check-interval", "nan", "must be a finite number > 0"),
    ("--manager-restart-window", "inf", "must be a finite number > 0"),
    ("--checker-shards", "1025", "must be <= 1024"),
])
def test_non_finite_or_too_large_values_are_usage_errors(tmp_path, option, value, why):
    res = subprocess.run(
        [sys.executable, "-m", "eurechat.directory", "--port", "0", "--data-dir", str(tmp_path),
         "--registry", "redis://127.0.0.1:1/0", option, value],
        capture_output=True, text=True, timeout=60, env=test_env())
    assert res.returncode == 2, res.stderr
    assert option in res.stderr and why in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
