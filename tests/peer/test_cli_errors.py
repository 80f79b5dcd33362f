"""A person's mistake on the peer's command line (and the echo bot's): one
clear line -- for a usage error the short usage line, then the error last --,
exit 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.peers import PASSWORD, peer_cmd
from support.processes import test_env

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_peer(args, **env) -> subprocess.CompletedProcess:
    return subprocess.run(peer_cmd() + args, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=test_env(**env))


@pytest.mark.parametrize("args,env,error", [
    (["--user", "alice", "--log-level", "LOUD"], {},
     "argument --log-level: invalid choice: 'LOUD' (choose from debug, info, warning, "
     "error, critical)"),
    (["--user", "alice"], {"EURECHAT_LOG_LEVEL": "chatty"},
     "argument --log-level: invalid choice: 'chatty'"),
    ([], {}, "the following arguments are required: --user"),
    (["--user", "alice", "--directory", "nowhere"], {},
     "argument --directory: expected HOST:PORT, got 'nowhere'"),
])
def test_usage_errors_are_a_short_usage_line_then_the_error(args, env, error):
    res = run_peer(args, EURECHAT_PASSWORD=PASSWORD, **env)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("usage: eurechat-peer --user NAME") and len(lines[0]) < 140
    assert lines[0].endswith("--help lists every option)")
    assert lines[1].startswith("eurechat-peer: error: ") and error in lines[1], lines


def test_log_level_takes_each_level_in_any_case(cluster):
    """A good level is taken (``INFO`` as well as ``info``): the INFO line of
    the directory login shows up, where the default level hides it."""
    peer = cluster.peer("alice", "--log-level", "INFO")
    peer.p.wait_for_log(r"INFO eurechat\.peer\.directory: logged in to ")
    assert peer.quit() == 0


def test_echo_bot_without_a_password_is_one_line(tmp_path):
    env = test_env()
    env.pop("EURECHAT_PASSWORD", None)
    res = subprocess.run([sys.executable, str(EXAMPLES / "echo_bot.py"), "--directory",
                          "127.0.0.1:1", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        "echo_bot.py: set EURECHAT_PASSWORD to the bot's password (at least 8 characters; "
        "the account is created if it is new)"]


def test_an_unusable_data_dir_is_reported_as_such_not_as_a_listen_failure(tmp_path):
    """A data directory that cannot be created (here: its parent is a
    regular file) is an error about ``--data-dir`` (exit 2), not "cannot
    listen on 127.0.0.1:0" (exit 6): not every OSError of start() is about
    listening."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    res = subprocess.run(peer_cmd() + ["--user", "alice", "--json", "--data-dir",
                                       str(blocker / "sub"), "--directory", "127.0.0.1:1"],
                         capture_output=True, stdin=subprocess.DEVNULL, timeout=30,
                         env=test_env(EURECHAT_PASSWORD=PASSWORD))
    assert res.returncode == 2, res.stderr
    (line,) = res.stdout.decode().splitlines()
    event = json.loads(line)
    assert set(event) == {"event", "text"} and event["event"] == "error"
    assert "--data-dir" in event["text"] and "listen" not in event["text"]
    assert str(blocker / "sub").encode() in res.stderr
