"""Ctrl-C (SIGINT to the whole process group) reaching a worker that is still
starting its interpreter.

Workers ignore SIGINT (the supervisor stops them), but a worker only gets to
say so once its code runs: a SIGINT during interpreter start-up would raise
KeyboardInterrupt inside ``site`` ("Fatal Python error: init_import_site"
and a traceback in the log of a directory that is shutting down cleanly).
So the supervisor forks workers with SIGINT blocked, and ``worker_main``
unblocks it only after setting SIG_IGN.

To hit that moment every time, a ``sitecustomize`` (imported by ``site``,
where the failure was) holds a new worker there: it writes its pid and
blocks reading a FIFO until the test has sent the SIGINT.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

from support.processes import start_directory, test_env

SITECUSTOMIZE = '''
import os
_d = os.environ.get("EURECHAT_TEST_HOLD_DIR")
if _d and os.path.exists(os.path.join(_d, "hold")):
    with open("/proc/self/cmdline", "rb") as _f:
        _argv = _f.read().split(b"\\0")
    if b"--worker-fd" in _argv:
        os.unlink(os.path.join(_d, "hold"))          # hold one worker only
        with open(os.path.join(_d, "pid.tmp"), "w") as _f:
            _f.write(str(os.getpid()))
        os.rename(os.path.join(_d, "pid.tmp"), os.path.join(_d, "pid"))
        with open(os.path.join(_d, "release")) as _f:  # a FIFO: blocks until released
            _f.read()
'''


def _wait_for_file(path: Path, timeout: float = 30.0) -> str:
    """The held worker announces itself in a file (renamed into place whole)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)   # polling a file the child writes: no event to wait on
    return path.read_text()


def _release(fifo: Path) -> None:
    """Let the held worker go on (if it is still there to read)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        assert exc.errno == errno.ENXIO   # no reader: it is gone already
        return
    os.close(fd)


def test_ctrl_c_while_a_worker_starts_its_interpreter_is_quiet(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    hold = tmp_path / "hold"
    hold.mkdir()
    os.mkfifo(hold / "release")
    env = test_env(EURECHAT_TEST_HOLD_DIR=str(hold),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(site),
                                                            os.environ.get("PYTHONPATH")])))
    d = start_directory("--workers", "2", data_dir=str(tmp_path / "data"), env=env)
    try:
        first = [int(m) for m in d.wait_for_log(r"worker 0 serving \(pid (\d+)\)").groups()]
        (hold / "hold").touch()
        os.kill(first[0], signal.SIGKILL)              # its restart is held in site
        held = int(_wait_for_file(hold / "pid"))
        assert held in d.group_alive()
        os.killpg(d.pid, signal.SIGINT)                # a terminal's Ctrl-C
        d.wait_for_log(r"shutting down")
        _release(hold / "release")
        assert d.wait(20) == 0
        assert d.wait_group_gone(10) == []
        err = d.stderr()
        assert "Traceback" not in err and "Fatal Python error" not in err, err
    finally:
        _release(hold / "release")
        d.kill_group()
