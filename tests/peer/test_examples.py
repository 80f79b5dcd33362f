"""The examples in examples/ run as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.processes import start_process

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_channel_example_runs():
    res = subprocess.run([sys.executable, str(EXAMPLES / "channel_echo.py")],
                         capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert b"400 whole replies" in res.stdout


def test_echo_bot_example_answers(cluster):
    bot = start_process([sys.executable, str(EXAMPLES / "echo_bot.py"), "--user", "echobot",
                         "--directory", cluster.hostport,
                         "--data-dir", str(cluster.tmp / "echobot")],
                        ready=r"echobot ready, listening on", env=cluster.env(), timeout=30)
    cluster.procs.append(bot)
    alice = cluster.peer("alice")
    alice.cmd("/msg echobot hello bot")
    reply = alice.wait_event("message", **{"from": "echobot"})
    assert reply["text"] == "echo: hello bot"
