#!/usr/bin/env python3
"""Run eurechat's fuzz targets for a given time and say what happened.

    .venv/bin/python fuzz/run.py all --seconds 300
    .venv/bin/python fuzz/run.py framing session --seconds 10 --work /tmp/fuzz

Each target runs in its own process under atheris (libFuzzer), starting from
its committed seeds (``fuzz/corpus/<target>/``, written by ``seeds.py``) plus
whatever earlier runs found (``<work>/<target>/corpus``; the committed seeds
are never written to).  A crash -- an uncaught exception, including a broken
invariant (``common.Finding``) -- leaves the input that caused it as
``<work>/<target>/crash-*``; reproduce it with
``.venv/bin/python fuzz/target_<target>.py <that file>``.

Per target it prints executions, the coverage libFuzzer reports (``cov``:
edges of the instrumented code, Python bytecode branches and, when the
extension is built with ``-fsanitize=fuzzer-no-link``, C edges; ``ft``:
features) at the start (seeds only) and at the end, the corpus size and the
crashes.  Exit status 1 when any target crashed or did not run.

``--native`` first compiles a copy of the extension with clang's
``-fsanitize=fuzzer-no-link`` (into ``<work>/native``; the package in use is
not touched) and runs the targets on it with atheris' libFuzzer preloaded,
so the C code of ``eurechat._framing`` is coverage-guided too (needs clang).

Without atheris (not installable on this platform), ``--engine replay`` runs
the seeds once each and nothing more: a regression check, not fuzzing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGETS = ["framing", "session", "server", "sniff", "peer", "directory_reply", "cert_request"]
#: The modules whose line coverage ``--lines`` reports, per target.
MODULES = {
    "framing": ["eurechat/fallback.py", "eurechat/rules.py"],
    "session": ["eurechat/directory/session.py"],
    "server": ["eurechat/directory/server.py", "eurechat/directory/session.py",
               "eurechat/tls/sniff.py"],
    "peer": ["eurechat/peer/protocol.py"],
    "directory_reply": ["eurechat/peer/directory_client.py"],
    "cert_request": ["eurechat/tls/enrolment.py"],
    "sniff": ["eurechat/tls/sniff.py", "eurechat/tls/policy.py"],
}

_STATS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_DONE = re.compile(r"^Done (\d+) runs in (\d+) second")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")
_REPLAYED = re.compile(r"^replayed (\d+) inputs")
_MODULES = re.compile(r"^INFO: Loaded \d+ modules?\s+\((\d+) inline 8-bit counters")


@dataclass
class Report:
    target: str
    engine: str
    seconds: float = 0.0
    c_counters: int = 0
    execs: int = 0
    cov_start: Optional[int] = None
    ft_start: Optional[int] = None
    cov: Optional[int] = None
    ft: Optional[int] = None
    corpus: Optional[int] = None
    returncode: Optional[int] = None
    crashes: List[str] = field(default_factory=list)
    lines: str = ""
    error: List[str] = field(default_factory=list)
    log: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.crashes

    def line(self) -> str:
        def n(v):
            return "-" if v is None else str(v)
        status = "ok" if self.ok else (f"CRASH x{len(self.crashes)}" if self.crashes
                                       else f"FAILED (exit {self.returncode})")
        return (f"{self.target:<10} {self.engine:<8} {self.seconds:7.1f}s {self.execs:>10} execs "
                f"cov {n(self.cov_start)}->{n(self.cov)} ft {n(self.ft_start)}->{n(self.ft)} "
                f"corpus {n(self.corpus)}{' C' if self.c_counters else ''}  {status}")


def script_of(target: str) -> str:
    if target.endswith(".py"):
        return os.path.abspath(target)
    return os.path.join(HERE, f"target_{target}.py")


def name_of(target: str) -> str:
    base = os.path.basename(target)
    return base[len("target_"):-3] if base.startswith("target_") and base.endswith(".py") \
        else base.removesuffix(".py")


def parse(report: Report, text: str) -> None:
    in_exception = False
    for line in text.splitlines():
        m = _STATS.match(line)
        if m:
            report.execs = int(m.group(1))
            report.cov, report.ft, report.corpus = (int(m.group(i)) for i in (3, 4, 5))
            if m.group(2) == "INITED":
                report.cov_start, report.ft_start = report.cov, report.ft
            continue
        m = _DONE.match(line)
        if m:
            report.execs = int(m.group(1))
            continue
        m = _MODULES.match(line)
        if m:
            report.c_counters += int(m.group(1))
            continue
        m = _REPLAYED.match(line)
        if m:
            report.execs = int(m.group(1))
            continue
        m = _ARTIFACT.search(line)
        if m:
            report.crashes.append(m.group(1))
            continue
        if "Uncaught Python exception" in line or line.startswith("Traceback"):
            in_exception = True
        if in_exception:
            report.error.append(line)
            if len(report.error) > 60 or line.startswith("==") and "ERROR" in line:
                in_exception = False


def build_native(work: str, python: str) -> str:
    """Compile a copy of the package's source with clang's coverage
    instrumentation; return the directory to put first on ``PYTHONPATH``."""
    dest = os.path.join(work, "native")
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    shutil.copytree(os.path.join(ROOT, "src"), os.path.join(dest, "src"),
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__", "*.egg-info"))
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(os.path.join(ROOT, name), dest)
    env = dict(os.environ, CC="clang", LDSHARED="clang -shared",
               CFLAGS="-O2 -fsanitize=fuzzer-no-link", EURECHAT_BUILD_EXTENSION="yes")
    proc = subprocess.run([python, "setup.py", "build_ext", "--inplace", "--force"], cwd=dest,
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"run.py: building the instrumented extension failed:\n{proc.stderr[-2000:]}")
    return os.path.join(dest, "src")


def native_env(src: str, python: str) -> dict:
    """``PYTHONPATH`` and ``LD_PRELOAD`` for running on the instrumented build."""
    path = subprocess.run([python, "-c", "import atheris; print(atheris.path())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    return {"PYTHONPATH": src, "LD_PRELOAD": os.path.join(path, "ubsan_with_fuzzer.so")}


def run_target(target: str, seconds: float, work: str, engine: str, python: str,
               extra: List[str], native: Optional[dict] = None) -> Report:
    name = name_of(target)
    report = Report(name, engine)
    script = script_of(target)
    seeds = os.path.join(HERE, "corpus", name)
    out_dir = os.path.join(work, name)
    corpus = os.path.join(out_dir, "corpus")
    os.makedirs(corpus, exist_ok=True)
    env = dict(os.environ)
    if native:
        env["LD_PRELOAD"] = native["LD_PRELOAD"]
        env["PYTHONPATH"] = os.pathsep.join(p for p in (native["PYTHONPATH"],
                                                        env.get("PYTHONPATH")) if p)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, env.get("PYTHONPATH")) if p)
    if engine == "atheris":
        env.pop("EURECHAT_FUZZ_ENGINE", None)
        cmd = [python, script, f"-max_total_time={max(1, int(seconds))}", "-timeout=30",
               "-rss_limit_mb=2048", "-max_len=4096", "-print_final_stats=1",
               f"-artifact_prefix={out_dir}{os.sep}", *extra, corpus]
    else:
        env["EURECHAT_FUZZ_ENGINE"] = "replay"
        cmd = [python, script, corpus]
    if os.path.isdir(seeds):
        cmd.append(seeds)
    report.log = os.path.join(out_dir, "log")
    start = time.monotonic()
    with open(report.log, "w") as log:
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  cwd=out_dir, timeout=seconds + 120)
            report.returncode = proc.returncode
        except subprocess.TimeoutExpired:
            report.returncode = -1
            report.error.append(f"did not stop within {seconds + 120:.0f} s")
    report.seconds = time.monotonic() - start
    with open(report.log, errors="replace") as log:
        parse(report, log.read())
    if report.returncode != 0 and not report.crashes and not report.error:
        with open(report.log, errors="replace") as log:
            report.error = log.read().splitlines()[-20:]
    return report


def line_coverage(report: Report, target: str, work: str, python: str) -> None:
    """Replay the target's corpus (seeds and finds) under coverage.py and keep
    its summary of the target's modules: lines and branches, which libFuzzer's
    edge count does not name."""
    name = name_of(target)
    modules = MODULES.get(name)
    if not modules:
        return
    out_dir = os.path.join(work, name)
    data = os.path.join(out_dir, ".coverage")
    env = dict(os.environ, EURECHAT_FUZZ_ENGINE="replay",
               PYTHONPATH=os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p))
    include = ",".join("*/" + m for m in modules)
    dirs = [os.path.join(out_dir, "corpus"), os.path.join(HERE, "corpus", name)]
    run = subprocess.run([python, "-m", "coverage", "run", "--branch", f"--data-file={data}",
                          f"--include={include}", script_of(target), *dirs],
                         env=env, cwd=out_dir, capture_output=True, text=True)
    if run.returncode != 0:
        report.lines = f"(coverage.py: {(run.stderr.strip().splitlines() or ['failed'])[-1]})"
        return
    rep = subprocess.run([python, "-m", "coverage", "report", f"--data-file={data}", "-m"],
                         cwd=out_dir, capture_output=True, text=True)
    report.lines = rep.stdout.rstrip()


def default_engine() -> str:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return "replay"
    return "atheris"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+", metavar="TARGET",
                        help=f"{', '.join(TARGETS)}, all, or a path to a target script")
    parser.add_argument("--seconds", type=float, default=60,
                        help="how long to fuzz each target (default 60)")
    parser.add_argument("--work", default=os.path.join(HERE, "work"),
                        help="where found inputs, crashes and logs go (default fuzz/work)")
    parser.add_argument("--engine", choices=["atheris", "replay"], default=default_engine(),
                        help="atheris (default when installed) or replay (seeds once each)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs the targets (default: this one)")
    parser.add_argument("--libfuzzer", action="append", default=[], metavar="ARG",
                        help="extra libFuzzer argument, e.g. --libfuzzer=-jobs=2")
    parser.add_argument("--lines", action="store_true",
                        help="then replay each corpus under coverage.py and report the line "
                             "and branch coverage of the target's modules (needs coverage)")
    parser.add_argument("--native", action="store_true",
                        help="fuzz an instrumented build of the extension (needs clang)")
    args = parser.parse_args(argv)
    targets = TARGETS if args.targets == ["all"] else args.targets
    for target in targets:
        if not os.path.isfile(script_of(target)):
            parser.error(f"no such target {target!r} (known: {', '.join(TARGETS)})")
    work = os.path.abspath(args.work)
    native = None
    if args.native:
        if args.engine != "atheris" or shutil.which("clang") is None:
            parser.error("--native needs atheris and clang")
        native = native_env(build_native(work, args.python), args.python)
    reports = []
    for target in targets:
        report = run_target(target, args.seconds, work, args.engine, args.python,
                            args.libfuzzer, native)
        if args.lines:
            line_coverage(report, target, work, args.python)
        print(report.line(), flush=True)
        if report.lines:
            print("\n".join("    " + line for line in report.lines.splitlines()), flush=True)
        for path in report.crashes:
            print(f"    crash input: {path}")
        if not report.ok:
            for line in report.error[-30:]:
                print(f"    | {line}")
            print(f"    log: {report.log}")
        reports.append(report)
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
