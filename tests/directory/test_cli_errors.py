"""A person's mistake on the directory's command line: one clear line (the
short usage line and the error last, for a usage error), exit 2, never a
traceback, never a runaway."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import List

import pytest

from support.processes import directory_cmd, start_process, test_env


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
