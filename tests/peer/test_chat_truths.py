"""The chat client tells the truth, clearly: what each notice and error line
says matches what happened, once.  Real directory, real
peer processes; text mode (what a person reads) unless the JSON events are
the point."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from eurechat.peer import AlreadyOnline, PasswordRefused, Peer
from support.client import FramedClient
from support.peers import PASSWORD, peer_cmd
from support.processes import Process, directory_cmd, start_process, test_env

README = Path(__file__).resolve().parents[2] / "README.md"
NESTED_PARENS = re.compile(r"\([^()]*\(")


def text_peer(cluster, name: str, *extra: str, ready: bool = True, env=None,
              data_dir: str = "") -> Process:
    """A peer in text mode (no --json), its stdin a pipe."""
    argv = peer_cmd() + ["--user", name, "--directory", cluster.hostport, "--register",
                         "--data-dir", data_dir or str(cluster.tmp / "peers" / name), *extra]
    p = start_process(argv, ready=rf"^\* you are {name}" if ready else None,
                      env=env or cluster.env(), stdin=subprocess.PIPE, timeout=30)
    cluster.procs.append(p)
    return p


def type_lines(p: Process, *lines: str) -> None:
    p.proc.stdin.write("".join(line + "\n" for line in lines).encode())
    p.proc.stdin.flush()


def finish(p: Process) -> int:
    """End of input: the peer quits; everything it wrote has been read."""
    p.proc.stdin.close()
    code = p.proc.wait(30)
    p._reader.join(10)
    p._err_reader.join(10)
    return code


# -- registration ---------------------------------------------------------------

def test_register_with_a_short_password_reports_the_rule_with_exit_8(cluster):
    res = subprocess.run(peer_cmd() + ["--user", "amy", "--register", "--directory",
                                       cluster.hostport, "--data-dir", str(cluster.tmp / "amy")],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                         env=cluster.env(EURECHAT_PASSWORD="short"))
    assert res.returncode == 8, res.stderr
    assert res.stderr.strip().splitlines() == [
        "eurechat-peer: cannot register 'amy': invalid password: 8 to 1024 bytes "
        "(choose a longer password)"]
    assert "taken" not in res.stderr


def test_a_short_password_is_refused_before_connecting(tmp_path):
    """--register with a password the rule refuses: exit 8 at once, also
    when the directory is down (the peer would otherwise start and retry a
    REGISTER that can never succeed)."""
    res = subprocess.run(peer_cmd() + ["--user", "amy", "--register", "--directory",
                                       "127.0.0.1:1", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                         env=test_env(EURECHAT_PASSWORD="short"))
    assert res.returncode == 8, res.stderr
    assert "invalid password: 8 to 1024 bytes" in res.stderr and "Traceback" not in res.stderr


def test_echo_bot_with_a_short_password_is_one_line(cluster):
    res = subprocess.run([sys.executable, str(README.parent / "examples" / "echo_bot.py"),
                          "--directory", cluster.hostport, "--data-dir", str(cluster.tmp / "b")],
                         capture_output=True, text=True, timeout=60,
                         env=cluster.env(EURECHAT_PASSWORD="short"))
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "echo_bot.py: cannot register 'echobot': invalid password: 8 to 1024 bytes")


def test_a_directory_refusing_the_password_is_not_a_taken_name(cluster):
    """The peer's engine, against the real directory: REGISTER answered
    'invalid password' is PasswordRefused at once (no login tried), and the
    directory logs the refused REGISTER, not a failed login."""
    mark = len(cluster.directory.err_lines)

    async def main() -> None:
        peer = Peer("amy", "short", directory=("127.0.0.1", cluster.dir_port),
                    data_dir=str(cluster.tmp / "amy"), register=True)
        with pytest.raises(PasswordRefused, match="invalid password: 8 to 1024 bytes"):
            await peer.start()

    asyncio.run(main())
    cluster.directory.wait_for_log(
        r"REGISTER of 'amy' from 127\.0\.0\.1 refused: invalid password: 8 to 1024 bytes",
        start=mark)
    with FramedClient("127.0.0.1", cluster.dir_port) as c:   # a barrier in the log
        c.request("REGISTER", "zed", "zed-password")
    cluster.directory.wait_for_log(r"account 'zed' created", start=mark)
    assert not any("failed login" in line for line in cluster.directory.err_lines[mark:])


def test_the_directory_logs_a_taken_name_as_such(cluster):
    cluster.peer("bob")
    mark = len(cluster.directory.err_lines)
    res = subprocess.run(peer_cmd() + ["--user", "bob", "--register", "--directory",
                                       cluster.hostport, "--data-dir", str(cluster.tmp / "b2")],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                         env=cluster.env(EURECHAT_PASSWORD="another password"))
    assert res.returncode == 4 and "the name is taken" in res.stderr
    cluster.directory.wait_for_log(
        r"REGISTER of 'bob' from 127\.0\.0\.1 refused: the name is taken", start=mark)


# -- the directory's state ----------------------------------------------------------------

def test_directory_unreachable_at_start_is_said_once(cluster):
    cluster.stop_directory()
    p = text_peer(cluster, "alice")
    assert finish(p) == 0
    said = [line for line in p.lines + p.err_lines if "unreachable" in line]
    assert len(said) == 1, p.lines + p.err_lines
    assert said[0].startswith("! directory 127.0.0.1:")


def test_who_while_the_directory_is_down_is_one_tidy_line(cluster):
    p = text_peer(cluster, "alice")
    cluster.stop_directory()
    type_lines(p, "/who")
    line = p.wait_for_line(r"^! /who: ").string
    assert not NESTED_PARENS.search(line), line
    assert "directory" in line
    assert finish(p) == 0


def test_a_login_refused_later_is_said_once_with_the_hint(cluster):
    """The account disappears while the peer runs (deleted, or a directory
    with other accounts): one line with the hint, not one per retry."""
    alice = cluster.peer("alice")
    cluster.stop_directory()
    res = subprocess.run(directory_cmd() + ["userdel", "alice", "--data-dir", cluster.dir_data],
                         capture_output=True, text=True, timeout=60, env=test_env())
    assert res.returncode == 0, res.stderr
    cluster.restart_directory()
    first = alice.wait_event("error")
    assert "refused the login as 'alice'" in first["text"]
    assert "no such account? start with --register" in first["text"]
    # The peer keeps retrying: the directory sees three more refused logins...
    mark = 0
    for _ in range(3):
        m = cluster.directory.wait_for_log(r"login of 'alice' from \S+ refused|failed login of "
                                           r"'alice'", start=mark, timeout=30)
        mark = cluster.directory.err_lines.index(m.string) + 1
    # ...and, with everything it printed before an answer read, said it once.
    n = len(alice.events())
    alice.cmd("/pending")
    alice.wait_event("pending", start=n)
    refused = [e for e in alice.events("error") if "refused the login" in e["text"]]
    assert len(refused) == 1, refused


def test_the_directory_coming_back_is_said_once(cluster):
    p = text_peer(cluster, "alice", "--log-level", "debug")
    cluster.stop_directory()
    line = p.wait_for_log(r"lost the directory session; reconnecting").string
    for _ in range(2):   # it stays away for a few retries
        line = p.wait_for_log(r"directory reconnect failed",
                              start=p.err_lines.index(line) + 1).string
    cluster.restart_directory()
    p.wait_for_log(r"^eurechat-peer: reconnected to the directory$")
    assert finish(p) == 0     # everything it wrote has been read
    assert sum("reconnected to the directory" in line
               for line in p.lines + p.err_lines) == 1, p.err_lines


def test_a_directory_reached_after_a_start_without_it_is_said_once(cluster):
    cluster.stop_directory()
    p = text_peer(cluster, "alice")
    p.wait_for_line(r"^! directory 127\.0\.0\.1:\d+: unreachable")
    cluster.restart_directory()
    p.wait_for_log(r"^eurechat-peer: connected to the directory$")
    assert finish(p) == 0
    assert sum("connected to the directory" in line
               for line in p.lines + p.err_lines) == 1, p.err_lines


# -- /who, never seen -------------------------------------------------------------------------

def test_who_name_says_that_name_is_not_online(cluster):
    cluster.peer("bob")
    p = text_peer(cluster, "alice")
    type_lines(p, "/who carol")
    p.wait_for_line(r"^\* carol is not online$")
    type_lines(p, "/who")
    p.wait_for_line(r"^\* bob at 127\.0\.0\.1:\d+$")
    assert not any("nobody is online" in line for line in p.lines)
    assert finish(p) == 0


def test_who_name_in_json_keeps_the_spec_event(cluster):
    alice = cluster.peer("alice")
    alice.cmd("/who carol")
    assert alice.wait_event("who") == {"event": "who", "users": []}


def test_never_seen_says_what_is_known_when_the_directory_is_down(cluster):
    cluster.stop_directory()
    p = text_peer(cluster, "alice")
    type_lines(p, "/msg zoe hi zoe")
    line = p.wait_for_line(r"^  \(zoe cannot be looked up now: the directory is "
                           r"unreachable; 1 message\(s\) queued").string
    assert "never" not in line and "name right" not in line
    type_lines(p, "/waiting")
    line = p.wait_for_line(r"^\* to zoe: 1 message\(s\) waiting for \d+ s; ").string
    assert line.endswith("not seen online by this peer so far; the directory is unreachable, "
                         "so it cannot be looked up now"), line
    assert finish(p) == 0


# -- the reply target -------------------------------------------------------------------------

def test_a_line_without_slash_goes_to_whom_you_last_wrote_to(cluster):
    """Before you have written to anyone: whoever last wrote to you.  Once
    you have, it stays there: a message arriving meanwhile does not redirect
    your next line."""
    alice = cluster.peer("alice")
    bob = cluster.peer("bob")
    carol = cluster.peer("carol")
    alice.cmd("/msg bob hi bob")
    bob.wait_event("message", text="hi bob")
    bob.cmd("hello alice")                                # bob never wrote: the sender
    assert alice.wait_event("message", text="hello alice")["from"] == "bob"
    carol.cmd("/msg bob carol here")
    bob.wait_event("message", text="carol here")
    bob.cmd("still you, alice")                           # still alice, not carol
    assert alice.wait_event("message", text="still you, alice")["from"] == "bob"
    bob.cmd("/msg carol barrier")                         # bob -> carol is in order:
    carol.wait_event("message", text="barrier")           # had the line gone to carol,
    assert [e["text"] for e in carol.events("message")] == ["barrier"]   # it came first
    # The same rule in /help and in the README.
    p = text_peer(cluster, "dave")
    type_lines(p, "/help")
    p.wait_for_line(r"send to the peer\(s\) you last wrote to \(before you$")
    p.wait_for_line(r"^ +wrote to anyone: whoever last wrote to you\)$")
    assert finish(p) == 0
    readme = " ".join(README.read_text(encoding="utf-8").split())
    assert ("a line without `/` goes to the peer(s) you last wrote to (before you have "
            "written to anyone: whoever last wrote to you)") in readme


# -- a second peer of the same user ----------------------------------------------------------------

def test_a_second_alice_from_another_data_directory_is_refused_and_the_first_stays(cluster):
    alice = cluster.peer("alice")
    address = alice.events("ready")[0]["listen"]
    res = subprocess.run(peer_cmd() + ["--user", "alice", "--directory", cluster.hostport,
                                       "--data-dir", str(cluster.tmp / "alice-2")],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                         env=cluster.env())
    assert res.returncode == 5, res.stderr
    # (a first contact with the directory may say first that it is trusted on first use)
    assert res.stderr.strip().splitlines()[-1] == (
        f"eurechat-peer: alice is already online at {address} (another eurechat-peer of this "
        "user, from another data directory or host): quit that one first")
    assert "Traceback" not in res.stderr
    bob = cluster.peer("bob")
    bob.cmd("/who alice")
    users = bob.wait_event("who")["users"]
    assert [f"{u['address']}:{u['port']}" for u in users] == [address]
    bob.cmd("/msg alice still here?")
    alice.wait_event("message", text="still here?")


def test_a_listing_left_by_a_killed_run_does_not_block_the_next_start(cluster):
    alice = cluster.peer("alice")
    alice.kill9()      # still listed until the directory's next check
    again = cluster.peer("alice")
    assert again.events("ready")


def test_the_engine_raises_already_online(cluster):
    alice = cluster.peer("alice")
    address = alice.events("ready")[0]["listen"]

    async def main() -> None:
        peer = Peer("alice", PASSWORD, directory=("127.0.0.1", cluster.dir_port),
                    data_dir=str(cluster.tmp / "alice-3"))
        with pytest.raises(AlreadyOnline, match=f"already online at {address}"):
            await peer.start()

    asyncio.run(main())
