"""The terminal mode: a real pseudo-terminal, prompt_toolkit on the other side.

A message arriving while the user is half-way through a line must not eat
that line: it is printed above the prompt, the typed text is redrawn, and
finishing the line sends exactly what was typed.  Log lines and notices go
above the input line like messages do, and what is typed while a command
waits goes into the prompt, not raw onto the screen.
"""

from __future__ import annotations

from support.peers import peer_cmd
from support.terminal import Pty


def test_terminal_keeps_the_typed_line_while_messages_arrive(cluster):
    bob = cluster.peer("bob")
    env = cluster.env(TERM="xterm", COLUMNS="100", LINES="30")
    term = Pty(peer_cmd() + ["--user", "alice", "--register", "--directory", cluster.hostport,
                             "--data-dir", str(cluster.tmp / "peers" / "alice")], env)
    try:
        pos = term.wait_for("you are alice, listening on")
        pos = term.wait_for("alice>", pos)
        term.type("/msg bob first line\r")
        bob.wait_event("message", text="first line")
        term.type("half typed")
        pos = term.wait_for("half typed", pos)
        bob.cmd("/msg alice interrupting you")
        pos = term.wait_for("bob: interrupting you", pos)
        # The prompt and the half-typed line are drawn again below the message.
        pos = term.wait_for("alice> half typed", pos)
        term.type(" and finished\r")
        m = bob.wait_event("message", text="half typed and finished")
        assert m["from"] == "alice"
        term.type("/quit\r")
        assert term.proc.wait(20) == 0
    finally:
        term.close()


def test_password_prompt_on_the_terminal(cluster):
    """No EURECHAT_PASSWORD, no --password-file: the peer asks on the terminal
    (without echoing what is typed) and logs in with the answer."""
    env = cluster.env(TERM="xterm", COLUMNS="100", LINES="30")
    del env["EURECHAT_PASSWORD"]
    term = Pty(peer_cmd() + ["--user", "carol", "--register", "--directory", cluster.hostport,
                             "--data-dir", str(cluster.tmp / "peers" / "carol")], env)
    try:
        pos = term.wait_for("password for carol:")
        term.type("a secret typed here\r")
        pos = term.wait_for("you are carol, listening on", pos)
        assert "a secret typed here" not in term.text()
        term.type("/quit\r")
        assert term.proc.wait(20) == 0
    finally:
        term.close()
    # The account was created with the typed password: it logs in with it.
    bob = cluster.peer("carol", register=False,
                       env=cluster.env(EURECHAT_PASSWORD="a secret typed here"))
    assert bob.events("ready")


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
