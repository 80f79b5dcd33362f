"""Review findings: option values that used to start a directory that then
crashed with a traceback (``--lease nan``: "cannot convert float NaN to
integer"; ``--lease inf``: OverflowError) or ran with something other than
asked (``--checker-shards 5000`` silently became 1024; ``--check-interval
nan`` a checker that never sleeps properly).  Each is a usage error now:
exit 2, the option named, no traceback -- before anything starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.processes import test_env


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
