"""What a person sees on the terminal besides messages: log lines and
notices go above the input line like messages do, and what is typed while a
command waits goes into the prompt, not raw onto the screen."""

from __future__ import annotations

from support.peers import peer_cmd
from support.terminal import Pty


def start_alice(cluster, **env) -> Pty:
    return Pty(peer_cmd() + ["--user", "alice", "--register", "--directory", cluster.hostport,
                             "--data-dir", str(cluster.tmp / "peers" / "alice")],
               cluster.env(TERM="xterm", COLUMNS="200", LINES="30", **env))


def test_a_log_line_while_typing_goes_above_the_input_line(cluster):
    term = start_alice(cluster)
    try:
        pos = term.wait_for("you are alice, listening on")
        pos = term.wait_for("alice>", pos)
        term.type("half typed")
        pos = term.wait_for("half typed", pos)
        cluster.stop_directory()
        pos = term.wait_for("lost the directory session; reconnecting", pos)
        # The log line is printed above, and the prompt with the half-typed
        # line is drawn again below it.
        pos = term.wait_for("alice> half typed", pos)
        term.type("\x15/quit\r")   # Ctrl-U clears the line
        assert term.proc.wait(20) == 0
    finally:
        term.close()


def test_lines_typed_while_who_waits_go_into_the_prompt(cluster):
    """/who waits (here up to 30 s) for a directory that is down; what is
    typed meanwhile is shown in the prompt at once, and /who still answers
    once the directory is back."""
    cluster.stop_directory()
    term = start_alice(cluster, EURECHAT_DIRECTORY_WAIT="30")
    try:
        pos = term.wait_for("alice>")
        term.type("/who\r")
        term.type("typed meanwhile")
        typed = term.wait_for("alice> typed meanwhile", pos)
        assert "* alice at" not in term.text()[pos:]   # /who has not answered yet
        cluster.restart_directory()
        answer = term.wait_for("* alice at 127.0.0.1:", typed)
        assert answer > typed
        term.wait_for("alice> typed meanwhile", answer)   # still there, under the answer
        term.type("\x15/quit\r")
        assert term.proc.wait(20) == 0
    finally:
        term.close()
