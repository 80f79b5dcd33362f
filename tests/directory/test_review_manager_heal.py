"""Review findings on the presence Manager's healing (``--workers N``).

The replacement Manager itself dies while its workers are starting (a second
kill -9 right after the first, an OOM killer picking the new process): the
new workers cannot reach it and fail.  The old workers must not be stopped
then -- they were stopping once every new worker had *tried*, so for about
two seconds nothing listened on the port and clients were refused.  They keep
the port until a generation bound to a live Manager serves.
"""

from __future__ import annotations

import os
import signal

from test_directory_manager_death import (
    MANAGER_RE,
    ConnectProbe,
    account,
    kill_manager,
    worker_pids,
)

from eurechat.framing import Message
from support.client import Responder
from support.processes import start_directory


def test_replacement_manager_killed_while_its_workers_start(tmp_path):
    d = start_directory("--workers", "2", data_dir=str(tmp_path))
    probe = ConnectProbe(d.address)
    try:
        first = kill_manager(d)
        warned = d.wait_for_log(rf"WARNING: presence manager \(pid {first}\)")
        after = d.err_lines.index(warned.string)
        probe.start()
        # The second Manager, killed as soon as it is announced: its workers
        # (started next, ~0.5 s each) find it gone.
        second = int(d.wait_for_log(MANAGER_RE, start=after).group(1))
        os.kill(second, signal.SIGKILL)
        again = d.wait_for_log(rf"WARNING: presence manager \(pid {second}\) was killed",
                               start=after)
        third = int(d.wait_for_log(MANAGER_RE, start=d.err_lines.index(again.string)).group(1))
        healed = d.wait_for_log(rf"presence manager replaced in [\d.]+ s: new manager pid "
                                rf"{third}, (\d+) of (\d+) workers serving", start=after)
        probe.stop()
        # Never a moment without a listener, not even through a double fault.
        assert probe.attempts > 0 and probe.refused == 0, (probe.attempts, probe.refused,
                                                          d.stderr())
        assert healed.group(1) == healed.group(2) == "2"
        assert len(worker_pids(d)) == 2  # the stand-ins were retired at the end
        with Responder() as target, account(d, "dora", "dora-password") as c:
            assert c.request("BIND", "127.0.0.1", str(target.port)).type == "ACK"
            assert c.request("QUERY", "dora") == Message(
                "RESULT", (), f"dora,127.0.0.1,{target.port}")
        assert d.stop() == 0
        assert d.wait_group_gone(5) == []
        assert "Traceback" not in d.stderr()
    finally:
        probe.stop()
        d.kill_group()
