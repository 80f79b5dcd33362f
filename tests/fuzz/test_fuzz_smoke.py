"""The fuzz targets run, find nothing in a short bounded run, and a crash would
fail the build.

Each target of ``fuzz/`` is run for a few seconds by ``fuzz/run.py`` (the same
command an operator uses for long runs), from its committed seeds; the test
fails on any crash, i.e. any broken invariant or difference between the two
framing implementations.  A canary target that always crashes shows that a
crash is noticed, reported and saved where it can be replayed.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FUZZ = os.path.join(ROOT, "fuzz")
RUN = os.path.join(FUZZ, "run.py")
TARGETS = ["framing", "session", "server", "sniff", "peer", "directory_reply", "cert_request"]
SECONDS = 3

#: Where pyproject.toml installs atheris with the test extra: there CI must
#: really fuzz, not fall back to replaying the seeds.
ATHERIS_EXPECTED = sys.platform == "linux" and platform.machine() == "x86_64" \
    and sys.version_info[:2] < (3, 14)

LINE = re.compile(r"^(\w+)\s+(atheris|replay)\s+[\d.]+s\s+(\d+) execs cov (\S+)->(\S+) .*  (ok|CRASH.*|FAILED.*)$")


def run(*args, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, RUN, *args], capture_output=True, text=True,
                          timeout=timeout)


def test_every_target_runs_without_finding(tmp_path):
    proc = run(*TARGETS, "--seconds", str(SECONDS), "--work", str(tmp_path),
               timeout=SECONDS * len(TARGETS) + 120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {m.group(1): m for m in map(LINE.match, proc.stdout.splitlines()) if m}
    assert sorted(lines) == sorted(TARGETS), proc.stdout
    for target, m in lines.items():
        seeds = len(os.listdir(os.path.join(FUZZ, "corpus", target)))
        assert m.group(6) == "ok", proc.stdout
        if ATHERIS_EXPECTED:
            assert m.group(2) == "atheris", proc.stdout
            # Beyond the seeds: it mutated, and measured coverage.
            assert int(m.group(3)) > seeds, proc.stdout
            assert int(m.group(5)) >= int(m.group(4)) > 0, proc.stdout
        else:
            assert int(m.group(3)) >= seeds, proc.stdout


def test_replay_engine_runs_each_seed_once(tmp_path):
    """``--engine replay`` (the fallback where atheris cannot be installed, and
    the way to re-check saved inputs) runs every committed seed of a target
    once through its checks.  (Under atheris, the run above starts with every
    seed too.)"""
    proc = run("framing", "--engine", "replay", "--work", str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = LINE.match(proc.stdout.splitlines()[0])
    assert m and m.group(2) == "replay" and m.group(6) == "ok", proc.stdout
    assert int(m.group(3)) == len(os.listdir(os.path.join(FUZZ, "corpus", "framing")))


CANARY = '''
import sys
import common

def TestOneInput(data):
    if len(data) >= 2:
        raise common.Finding("canary: %r" % data)

if __name__ == "__main__":
    common.main(TestOneInput, sys.argv)
'''


def test_a_crash_fails_the_run_and_is_saved(tmp_path):
    script = tmp_path / "target_canary.py"
    script.write_text(CANARY)
    work = tmp_path / "work"
    proc = run(str(script), "--seconds", "20", "--work", str(work), timeout=150)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "CRASH" in proc.stdout and "canary" in proc.stdout, proc.stdout
    crash = re.search(r"crash input: (\S+)", proc.stdout).group(1)
    assert os.path.isfile(crash)
    # The saved input reproduces the crash on its own.
    env = dict(os.environ, PYTHONPATH=FUZZ, EURECHAT_FUZZ_ENGINE="replay")
    again = subprocess.run([sys.executable, str(script), crash], capture_output=True, text=True,
                           env=env, timeout=60)
    assert again.returncode != 0 and "canary" in again.stderr, again.stderr
